"""The stage contract: config written once, inputs checked, outputs recorded, _SUCCESS.json last."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from ..config import Config, config_hash, from_dict, to_yaml
from ..errors import ConfigError, StageError
from ..methods import METHODS
from ..store import Store
from .plan import PLANS, Output, Plan, Stage

import yaml

SUCCESS = "_SUCCESS.json"
CONFIG_KEY = "config.yaml"


def stage_prefix(stage: str, cluster: int | None = None) -> str:
    """Where a stage writes: `<stage>/`, or `expert/<k>/` for one expert."""
    return f"{stage}/{cluster}" if cluster is not None else stage


def is_done(store: Store, prefix: str, chash: str) -> bool:
    if not store.exists(f"{prefix}/{SUCCESS}"):
        return False
    return store.read_json(f"{prefix}/{SUCCESS}").get("config_hash") == chash


def run_methods(cfg: Config) -> list:
    """The method configs a run trains with: `method`, and `baseline.method` where the plan has an enabled baseline."""
    found = [cfg.method]
    if cfg.baseline.enabled and "baseline" in PLANS[cfg.plan].names:
        found.append(cfg.baseline.method)
    return found


def plan_of(cfg: Config) -> Plan:
    """The stages this run executes: its plan, with the optional stages its methods need (Method.needs_stages)."""
    return PLANS[cfg.plan].for_run({s for m in run_methods(cfg) for s in METHODS[m.name].needs_stages})


# The SSL models a run can train, under the names evaluate reports them, and the stage that trains each.
MODEL_STAGES = {"base": "pretrain", "baseline": "baseline", "student": "distill"}  # the recipe's output last


def trained_models(cfg: Config) -> tuple[str, ...]:
    """The models this run trains: those whose stage is in its plan (the baseline stage only with baseline.enabled)."""
    names = plan_of(cfg).names
    return tuple(m for m, stage in MODEL_STAGES.items()
                 if stage in names and (stage != "baseline" or cfg.baseline.enabled))


def training_stages(cfg: Config, model: str) -> set[str]:
    """The stages whose work went into `model`: the stage that trains it and every stage that one needs."""
    plan, stage = plan_of(cfg), MODEL_STAGES[model]
    return {stage} | plan.ancestors(stage)


def fan_out_ids(store: Store, plan: Plan, stage: Stage) -> list[int]:
    """The ids a fan-out stage runs over: the list its source stage wrote."""
    return store.read_json(plan.stage(stage.fan_out).output.source)


def check_needs(store: Store, plan: Plan, stage: Stage, chash: str) -> None:
    """Every stage `stage` reads from must be done for this config (a fan-out stage: every one of its tasks)."""
    for need in stage.needs:
        dep = plan.stage(need)
        if not dep.fan_out:
            if not is_done(store, need, chash):
                raise StageError(f"stage {stage.name} needs stage {need!r} to be done first in {store.uri}; "
                                 f"run `lt-ssl stage {need} --run {store.uri}`")
            continue
        missing = [k for k in fan_out_ids(store, plan, dep) if not is_done(store, stage_prefix(need, k), chash)]
        if missing:
            raise StageError(f"stage {stage.name} needs every {need}; {need}s {missing} are not done: "
                             f"run `lt-ssl stage {need} --cluster K --run {store.uri}` for them")


def write_output(output: Output, store: Store, path: str) -> None:
    """Copy the fields Argo reads from the run's `output.source` to files at `path` (see plan.Output)."""
    data = store.read_json(output.source)

    def write(file: str, value) -> None:
        with open(file, "w") as f:
            f.write(f"{value:.6f}" if isinstance(value, float) else json.dumps(value, separators=(",", ":")))

    if output.is_file:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write(path, data)
        return
    os.makedirs(path, exist_ok=True)
    for name, field_path in output.fields:
        value = data
        for part in field_path.split("."):
            value = value[part]
        write(os.path.join(path, name), value)


def write_config_once(store: Store, cfg: Config) -> None:
    """A run has one config from its first finished stage on; a different one for the same run URI is then
    refused. Before that (a prepare that failed, e.g. on bad data) the config may still change, so the
    fix, such as another data.root, reruns under the same --run."""
    if store.exists(CONFIG_KEY):
        try:
            existing = read_config(store)
        except ConfigError:  # written by another lt-ssl version: only replaceable while nothing is done
            existing = None
        if existing is not None and existing == cfg:
            return
        same_results = existing is not None and config_hash(existing) == config_hash(cfg)
        if not same_results and any(key.endswith(f"/{SUCCESS}") for key in store.list()):
            raise StageError(
                f"{store.uri} already holds a run with a different config; use a new --run, or the same config and overrides to resume it")
        # Same results, other surroundings (device, metrics URL, data location), or nothing done yet: the stages
        # still to run use this config.
    store.write_text(CONFIG_KEY, to_yaml(cfg))


def read_config(store: Store) -> Config:
    if not store.exists(CONFIG_KEY):
        raise StageError(f"{store.uri} has no {CONFIG_KEY}; run `lt-ssl stage prepare --run {store.uri} --config ...` first")
    try:
        return from_dict(yaml.safe_load(store.read_text(CONFIG_KEY)))
    except ConfigError as e:
        raise ConfigError(f"{store.url(CONFIG_KEY)}: {e}") from None


@dataclass
class Outputs:
    """What a stage wrote, so _SUCCESS.json can list it."""

    store: Store
    prefix: str
    keys: list[str] = field(default_factory=list)

    def key(self, name: str) -> str:
        k = f"{self.prefix}/{name}"
        if k not in self.keys:
            self.keys.append(k)
        return k

    def bytes(self, name: str, data: bytes) -> None:
        self.store.write_bytes(self.key(name), data)

    def json(self, name: str, obj) -> None:
        self.store.write_json(self.key(name), obj)

    def text(self, name: str, text: str) -> None:
        self.store.write_text(self.key(name), text)

    def numpy(self, name: str, array) -> None:
        self.store.write_numpy(self.key(name), array)


def code_commit(checkout: Path) -> str | None:
    """The git commit of the checkout holding this code, "<sha>-dirty" when tracked files differ from it (untracked
    files do not count), None outside a git checkout or without git."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=checkout)

    try:
        sha = git("rev-parse", "HEAD").stdout.strip()
        if not sha:
            return None
        return sha + ("-dirty" if git("diff", "--quiet", "HEAD", "--").returncode == 1 else "")
    except (OSError, subprocess.SubprocessError):
        return None


# Read when this process imports the code, not when a stage ends: a checkout made while a stage runs (an experiment
# worktree moved to a newer commit) must not relabel the code the stage had already loaded. Stage processes forked
# by the local runner inherit the runner's value along with its code.
_CODE_COMMIT = code_commit(Path(__file__).resolve().parent)


def provenance() -> dict:
    """What made this output: code version (LT_SSL_GIT_COMMIT where the code has no .git, e.g. an image or a device
    call's copy; else the checkout's commit at import), packages, machine (STYLE 6)."""
    commit = os.environ.get("LT_SSL_GIT_COMMIT") or _CODE_COMMIT
    versions = {}
    for pkg in ("lt-ssl", "torch", "torchvision", "numpy", "scikit-learn"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {"git_commit": commit, "versions": versions, "python": sys.version.split()[0],
            "host": platform.node(), "image": os.environ.get("LT_SSL_IMAGE")}


def write_success(out: Outputs, chash: str, started: float, extra: dict | None = None) -> None:
    finished = time.time()
    out.store.write_json(f"{out.prefix}/{SUCCESS}", {
        "config_hash": chash,
        "outputs": sorted(out.keys),
        "started": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(),
        "finished": dt.datetime.fromtimestamp(finished, dt.timezone.utc).isoformat(),
        "seconds": round(finished - started, 3),
        "provenance": provenance(),
        **(extra or {}),
    })
