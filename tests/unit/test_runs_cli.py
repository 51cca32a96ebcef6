"""`lt-ssl runs list/show` over hand-made run folders (file://), laid out as the stage contract writes them."""

from __future__ import annotations

import argparse
import json

import pytest
import yaml

from lt_ssl import runs
from lt_ssl.config import Config, config_hash, to_dict
from lt_ssl.errors import StageError
from lt_ssl.store import open_store


def _success(store, prefix: str, chash: str, outputs: list[str], seconds: float) -> None:
    for key in outputs:
        store.write_bytes(key, b"x")
    store.write_json(f"{prefix}/_SUCCESS.json", {
        "config_hash": chash, "outputs": outputs, "started": "2026-01-02T03:04:05+00:00",
        "finished": "2026-01-02T03:05:05+00:00", "seconds": seconds,
    })


def _make_run(root, run_id: str, *, name: str = "quickstart") -> tuple[object, str]:
    """A run with prepare/pretrain/cluster done, experts 0 and 2 of [0, 1, 2] done, expert 1 cut off."""
    store = open_store((root / run_id).as_uri())
    cfg = Config(name=name)
    chash = config_hash(cfg)
    store.write_text("config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    _success(store, "prepare", chash, ["prepare/subset.npy", "prepare/info.json"], 1.5)
    _success(store, "pretrain", chash, ["pretrain/model.pt"], 42.25)
    _success(store, "cluster", chash, ["cluster/clusters.json", "cluster/assign.npy"], 3.0)
    store.write_json("cluster/clusters.json", [0, 1, 2])
    _success(store, "expert/0", chash, ["expert/0/model.pt"], 10.0)
    store.write_bytes("expert/1/ckpt/epoch-3.pt", b"partial")  # killed before _SUCCESS.json
    _success(store, "expert/2", chash, ["expert/2/model.pt"], 11.0)
    _success(store, "baseline", "0123456789abcdef", ["baseline/model.pt"], 5.0)  # another config's
    return store, chash


def _cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lt-ssl")
    runs.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(list(argv))


def test_show_reports_each_stage_and_expert(tmp_path, capsys):
    store, chash = _make_run(tmp_path, "r1")
    info = runs.show_run(store)
    assert info["config"]["name"] == "quickstart" and info["config"]["hash"] == chash
    assert info["created"] and info["created"].endswith("+00:00")
    status = {(s["stage"], s["cluster"]): s for s in info["stages"]}
    assert status[("prepare", None)]["status"] == "done"
    assert status[("prepare", None)]["outputs"] == 2 and status[("prepare", None)]["seconds"] == 1.5
    assert status[("pretrain", None)]["status"] == "done"
    assert status[("baseline", None)]["status"] == "stale"
    assert status[("cluster", None)]["status"] == "done"
    assert [status[("expert", k)]["status"] for k in (0, 1, 2)] == ["done", "incomplete", "done"]
    assert status[("distill", None)]["status"] == "missing"
    assert status[("evaluate", None)]["status"] == "missing"
    assert [s["stage"] for s in info["stages"]] == [
        "prepare", "pretrain", "baseline", "cluster", "expert", "expert", "expert", "distill", "evaluate"]

    assert runs.main(_cli("runs", "show", store.uri)) == 0
    out = capsys.readouterr().out
    assert f"config:  quickstart (hash {chash}, plan recipe)" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines()[4:] if line.strip()}
    assert lines["pretrain"][1:4] == ["done", "1", "42.2"] or lines["pretrain"][1:4] == ["done", "1", "42.3"]
    assert lines["expert/1"][1] == "incomplete" and lines["expert/2"][1] == "done"
    assert lines["distill"][1:] == ["missing", "-", "-", "-"]

    assert runs.main(_cli("runs", "show", "--json", str(tmp_path / "r1"))) == 0  # plain path works too
    assert json.loads(capsys.readouterr().out)["run"] == store.uri


def test_show_before_clustering_says_experts_unknown(tmp_path):
    store = open_store((tmp_path / "r0").as_uri())
    cfg = Config(name="fresh")
    store.write_text("config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    store.write_bytes("prepare/subset.npy", b"x")  # prepare running
    info = runs.show_run(store)
    st = {(s["stage"], s["cluster"]): s for s in info["stages"]}
    assert st[("prepare", None)]["status"] == "incomplete"
    assert st[("expert", None)]["status"] == "missing" and "not known" in st[("expert", None)]["note"]


def test_list_shows_runs_with_stages_done(tmp_path, capsys):
    _make_run(tmp_path, "r1")
    _make_run(tmp_path, "r2", name="other")
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "not-a-run" / "notes.txt").write_text("hello")
    found = runs.list_runs(open_store(tmp_path.as_uri()))
    assert [r["id"] for r in found] == ["r1", "r2"]
    r1 = found[0]
    assert r1["done"] == ["prepare", "pretrain", "baseline", "cluster"]
    assert r1["experts_done"] == [0, 2] and r1["experts_expected"] == [0, 1, 2]
    assert r1["stages_done"] == 6 and r1["stages_total"] == 9
    assert r1["uri"] == (tmp_path / "r1").as_uri() and r1["created"]

    assert runs.main(_cli("runs", "list", tmp_path.as_uri())) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["RUN", "CREATED", "DONE", "STAGES", "DONE"]
    assert out[1].split()[0] == "r1" and out[1].split()[2] == "6/9"
    assert out[1].split()[3] == "prepare,pretrain,baseline,cluster,expert[2/3]"

    assert runs.main(_cli("runs", "list", "--json", str(tmp_path))) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == ["r1", "r2"]


def test_list_of_an_empty_folder_and_show_of_a_non_run(tmp_path, capsys):
    assert runs.main(_cli("runs", "list", str(tmp_path))) == 0
    assert "no runs under" in capsys.readouterr().out
    with pytest.raises(StageError, match="holds no run"):
        runs.show_run(open_store((tmp_path / "nothing").as_uri()))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "x.txt").write_text("x")
    with pytest.raises(StageError, match="no config.yaml"):
        runs.show_run(open_store((tmp_path / "half").as_uri()))


def test_the_real_cli_dispatches_runs(tmp_path, capsys):
    from lt_ssl.cli import main

    _make_run(tmp_path, "r1")
    assert main(["runs", "list", str(tmp_path)]) == 0
    assert "r1" in capsys.readouterr().out
    assert main(["runs", "show", str(tmp_path / "missing")]) == 2
    assert "holds no run" in capsys.readouterr().err


def test_a_plain_plan_run_lists_only_its_stages(tmp_path, capsys):
    """`runs` reads the stages from the run's plan: a plain run has no cluster, experts or distill."""
    store = open_store((tmp_path / "p1").as_uri())
    cfg = Config(name="plain", plan="plain")
    chash = config_hash(cfg)
    store.write_text("config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    _success(store, "prepare", chash, ["prepare/info.json"], 1.0)
    info = runs.show_run(store)
    assert [s["stage"] for s in info["stages"]] == ["prepare", "pretrain", "evaluate"]
    (listed,) = runs.list_runs(open_store(tmp_path.as_uri()))
    assert (listed["plan"], listed["done"], listed["stages_done"], listed["stages_total"]) == ("plain", ["prepare"], 1, 3)
