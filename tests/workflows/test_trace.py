"""Walk the Argo DAGs as the controller would and collect every `lt-ssl` command: they must be the
commands `lt-ssl run` executes for the same config, overrides and clusters, recorded as it runs."""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest
import yaml

from lt_ssl.cli import _split_overrides
from lt_ssl.pipeline import local, plan, validate
from lt_ssl.pipeline.contract import plan_of, write_output
from lt_ssl.pipeline.report import GROUPS
from lt_ssl.store import open_store

from .conftest import REPO, spec_of, templates_of

WF_NAME = "cluster-distill-x7k2q"


class Trace:
    """A tiny interpreter for our DAGs: parameters, withParam/withItems, output files of the stages."""

    def __init__(self, obj: dict, params: dict[str, str], cluster_ids: list[int], wanted: frozenset[str] = frozenset()):
        spec = spec_of(obj)
        self.templates = templates_of(obj)
        self.cluster_ids = cluster_ids
        self.wanted = wanted  # the optional stages the config's methods need, as prepare would report them
        declared = {p["name"]: p.get("value", "") for p in spec["arguments"]["parameters"]}
        assert set(params) <= set(declared), f"unknown parameters {set(params) - set(declared)}"
        declared |= params
        self.globals = {"workflow.name": WF_NAME}
        self.globals |= {f"workflow.parameters.{k}": validate.substitute(v, self.globals) for k, v in declared.items()}
        self.commands: list[list[str]] = []
        self.entrypoint = spec["entrypoint"]

    def sub(self, text: str, local: dict[str, str]) -> str:
        out = validate.substitute(text, self.globals | local)
        assert "{{" not in out, f"unresolved variable in {text!r} -> {out!r}"
        return out

    def run(self, name: str, inputs: dict[str, str]) -> dict[str, str]:
        t = self.templates[name]
        declared = {p["name"] for p in (t.get("inputs") or {}).get("parameters") or []}
        assert set(inputs) == declared, f"{name}: given {sorted(inputs)}, declared {sorted(declared)}"
        local = {f"inputs.parameters.{k}": v for k, v in inputs.items()}
        if "dag" in t:
            return self.run_dag(t, local)
        c = t["container"]
        argv = [self.sub(a, local) for a in [*c["command"], *c.get("args", [])]]
        self.commands.append(argv)
        files = {}
        if argv[:3] == ["lt-ssl", "stage", "cluster"]:  # the stage writes the non-empty ids here
            files[argv[argv.index("--clusters-out") + 1]] = json.dumps(self.cluster_ids).replace(" ", "")
        if argv[:3] == ["lt-ssl", "stage", "prepare"]:  # whether the run wants each optional stage
            out = argv[argv.index("--outputs-dir") + 1]
            files |= {f"{out}/{s.name}": json.dumps(s.name in self.wanted) for s in plan.OPTIONAL}
        outputs = {}
        for p in (t.get("outputs") or {}).get("parameters") or []:
            path = p["valueFrom"]["path"]
            outputs[p["name"]] = files.get(path, "0.5")
        return outputs

    def run_dag(self, t: dict, local: dict[str, str]) -> dict[str, str]:
        tasks = {task["name"]: task for task in t["dag"]["tasks"]}
        deps = {n: validate.depends_names(task.get("depends", "")) for n, task in tasks.items()}
        done: dict[str, dict[str, str]] = {}
        while len(done) < len(tasks):  # Kahn's order, ties broken by the order the tasks are listed
            name = next(n for n in tasks if n not in done and all(d in done for d in deps[n]))
            task = tasks[name]
            scope = local | {f"tasks.{d}.outputs.parameters.{k}": v for d, out in done.items() for k, v in out.items()}
            if "withParam" in task:
                items = json.loads(self.sub(task["withParam"], scope))
            else:
                items = task.get("withItems", [None])
            for item in items:
                item_scope = dict(scope)
                if isinstance(item, dict):
                    item_scope |= {f"item.{k}": str(v) for k, v in item.items()}
                elif item is not None:
                    item_scope["item"] = str(item)
                if "when" in task and self.sub(task["when"], item_scope) != "true == true":  # our `when`s only
                    done[name] = {}  # Skipped: a plain `depends` on it is still satisfied
                    continue
                args = {p["name"]: self.sub(p["value"], item_scope) for p in (task.get("arguments") or {}).get("parameters") or []}
                done[name] = self.run(task["template"], args)
        return {}

    def trace(self) -> list[list[str]]:
        self.run(self.entrypoint, {})
        return self.commands


def lt_ssl_only(cmds: list[list[str]]) -> list[list[str]]:
    return [c for c in cmds if c[0] == "lt-ssl"]


def normalised(argv: list[str]) -> dict[str, Any]:
    """What the CLI makes of a command, overrides split the way `lt-ssl` splits them."""
    ns, err = validate.parse_cli(argv[1:])
    assert ns is not None, f"{argv} does not parse: {err}"
    d = {k: v for k, v in vars(ns).items() if k != "func"}
    if "overrides" in d:
        d["overrides"] = _split_overrides(d["overrides"])
    return d


def local_commands(monkeypatch, tmp_path, argo_run_uri: str, argo_config: str, overrides: str,
                   ids: list[int]) -> list[list[str]]:
    """Run `lt-ssl run` with each stage process replaced by a recorder that writes what the stage would
    hand on (the cluster ids, the metrics); returns the commands the runner executed, in the order it ran
    them, with its local run URI, config path and temp output paths put back as Argo spells them."""
    raw = yaml.safe_load((REPO / "configs" / argo_config.rsplit("/", 1)[-1]).read_text())
    data = raw.setdefault("data", {})
    data["root"] = data.get("root") or "/data/cifar"  # given on Argo as an override; the commands do not change
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = str(tmp_path / "config.yaml")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    run_uri = (tmp_path / "run").as_uri()
    store = open_store(run_uri)
    executed: list[list[str]] = []

    def record(argv: list[str], threads: int, device: str | None, debug: bool, progress: bool = True) -> int:
        executed.append(list(argv))
        run_plan = plan_of(local.load_config(config, shlex.split(overrides)))
        stage = run_plan.stage(argv[2])
        if stage.output:
            fake = ids if stage.fan_out is None and stage.output.is_file else {"models": {
                m: {e: {g: 0.5 for g in GROUPS} for e in ("knn", "linear")} for m in ("base", "student")}}
            if stage.takes_config:  # as prepare writes it
                fake = {s.name: s.name in run_plan.names for s in plan.OPTIONAL}
            store.write_json(stage.output.source, fake)
            path = argv[argv.index(stage.output.flag) + 1]
            write_output(stage.output, store, path)
            argv = executed[-1]
            argv[argv.index(path)] = stage.output.path  # a temp path locally, the pod's path on Argo
        return 0

    monkeypatch.setattr(local, "_execute", record)
    assert local.run(config, shlex.split(overrides), run_uri, workers=1, device=None, debug=False) == 0
    swap = {run_uri: argo_run_uri, config: argo_config}
    return [[swap.get(a, a) for a in argv] for argv in executed]


CASES = [
    ({}, [0, 1, 2], frozenset()),
    ({"config": "/app/configs/cifar10_lt.yaml", "overrides": "cluster.k=3 seed=1", "run-id": "nightly-7",
      "bucket": "team-bucket"}, [0, 1, 2], frozenset()),
    ({"overrides": "cluster.k=8"}, [0, 2, 5], frozenset()),  # empty clusters leave gaps in the ids
    ({"overrides": "method.name=gsimclr"}, [0, 1], frozenset({"pseudolabel"})),  # a method that needs pseudo-labels
]


@pytest.mark.parametrize("params,ids,wanted", CASES)
def test_cluster_distill_runs_the_local_runners_commands(committed, monkeypatch, tmp_path, params, ids, wanted):
    o = committed["cluster_distill.yaml"]
    got = lt_ssl_only(Trace(o, params, ids, wanted).trace())
    assert ("pseudolabel" in [c[2] for c in got]) == ("pseudolabel" in wanted)
    defaults = {p["name"]: p["value"] for p in spec_of(o)["arguments"]["parameters"]}
    p = defaults | params
    run_id = p["run-id"].replace("{{workflow.name}}", WF_NAME)
    run_uri = f"s3://{p['bucket']}/runs/{run_id}"
    want = local_commands(monkeypatch, tmp_path, run_uri, p["config"], p["overrides"], ids)
    # Argo hands the overrides over as one argument, which the CLI splits: compare what the CLI makes of them.
    assert [normalised(c) for c in got] == [normalised(c) for c in want]
    assert [c[:3] for c in got] == [c[:3] for c in want]


def test_every_expert_gets_a_pod(committed):
    got = lt_ssl_only(Trace(committed["cluster_distill.yaml"], {}, [0, 1, 2]).trace())
    experts = [c[c.index("--cluster") + 1] for c in got if c[2] == "expert"]
    assert experts == ["0", "1", "2"]


def test_stages_template_runs_the_same_commands(committed):
    a = Trace(committed["cluster_distill.yaml"], {}, [0, 1]).trace()
    b = Trace(committed["lt_ssl_stages.yaml"], {}, [0, 1]).trace()
    assert lt_ssl_only(a) == lt_ssl_only(b)


def test_regression_cron_runs_the_stages_then_compare(committed, monkeypatch, tmp_path):
    """Every cell: the local runner's commands for its config and overrides in its own run folder, then
    `lt-ssl compare` against its own baseline."""
    from lt_ssl.pipeline.argo import CONFIGS, REGRESSION_CELLS

    o = committed["regression_cron.yaml"]
    got = lt_ssl_only(Trace(o, {"overrides": "seed=0"}, [0, 1]).trace())
    want = []
    for name, config, baseline, overrides in REGRESSION_CELLS:
        run_uri = f"s3://lt-ssl/runs/{WF_NAME}/{name}"
        cell_overrides = f"{overrides.replace('{{workflow.parameters.bucket}}', 'lt-ssl')} seed=0"
        want += local_commands(monkeypatch, tmp_path / name, run_uri, f"{CONFIGS}/{config}", cell_overrides, [0, 1])
        want.append(["lt-ssl", "compare", "--run", run_uri, "--baseline", f"{CONFIGS}/{baseline}",
                     "--outputs-dir", plan.OUTPUTS_DIR])
    assert [normalised(c) for c in got] == [normalised(c) for c in want]
    assert len({c[c.index("--run") + 1] for c in got}) == len(REGRESSION_CELLS)  # one run folder per cell
    assert any("data.root=s3://lt-ssl/datasets/fashion-mnist" in a for c in got for a in c)  # read from the bucket


def test_experiment_runs_each_cells_plan(committed, monkeypatch, tmp_path):
    """Experiment I's workflow: per cell, the commands `lt-ssl run` executes for that cell's overrides."""
    from lt_ssl.experiment import load_experiment

    exp = load_experiment(REPO / "experiments" / "exp1_imbalance.yaml")
    got = lt_ssl_only(Trace(committed["experiment_exp1_imbalance.yaml"], {"overrides": "pretrain.epochs=300"}, [0]).trace())
    want = []
    for cell in exp.cells:
        want += local_commands(monkeypatch, tmp_path / cell.id, f"s3://lt-ssl/runs/{WF_NAME}/{cell.id}",
                               f"/app/{exp.config}", " ".join([*cell.overrides, "pretrain.epochs=300"]), [0])
    assert [normalised(c) for c in got] == [normalised(c) for c in want]
    assert {c[2] for c in got} == {"prepare", "pretrain", "evaluate"}
