"""`lt-ssl experiment`: a grid of ordinary runs declared in one YAML, run, listed, reported and rendered for Argo.

An experiment file (experiments/*.yaml):

    name: exp2_cluster_distill          # names the report files and the Argo workflow
    config: configs/fashion_mnist_lt.yaml   # the base run config (relative to the working directory)
    overrides: [pretrain.epochs=20]     # applied to every cell, before the variant's and the axes'
    variants:                           # optional; a variant = a named set of overrides and the model it reports
      SimSiam+C+D: {overrides: [cluster.k=3], model: student}
      SimSiam+D:   {overrides: [cluster.k=1], model: student}
      SimSiam:     {from: SimSiam+C+D, model: baseline}   # no runs of its own: another model of those cells
    pending: [MSN]                      # variants whose method is not registered yet: "not yet run" rows
    differences:                        # optional: paired, split-by-split differences in the report
      - {by: variant, reference: SimSiam}   # (lt_ssl/differences.py; `by` may also be an axis key)
    axes:                               # config key -> values; the cells are their product (a list of
      data.imbalance: [10, 100]         # such mappings is the union of several products; a mapping's
                                        # `variants: [...]` limits it to those variants, and its
                                        # `overrides: [...]` apply to its cells, before the axis values)
      data.split: [0, 1, 2]

Each cell is a plain `lt-ssl run` of the base config with its overrides, in PREFIX/<cell id>; the id is
made of the variant and the axis values (`simsiam-c-d--imbalance-10--split-0`), so rerunning the same
command resumes: the stage contract skips what is done, and a cell whose config changed is refused by
write_config_once instead of overwritten. The report averages over data.split and seed; every other
axis and the variant make a row. A `from` variant reports only the cells that train its model (a grid with
`overrides: [baseline.enabled=false]` gives its `from: ..., model: baseline` variant no row there).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import io
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import yaml

from . import differences
from .config import Config, _resolve_key, config_hash, load_config
from .differences import Difference
from .pipeline.local import cores
from .pipeline.plan import PLANS
from .pipeline.report import GROUPS, eval_order, parse_results_row, parse_score_line
from .pipeline.forward_stop import ForwardStop
from .stats import csv_mean_std, fmt_points, mean_std
from .errors import EXIT_PREEMPTED, ConfigError, LtSslError
from .pipeline.contract import CONFIG_KEY, MODEL_STAGES, SUCCESS, is_done, trained_models, training_stages
from .pipeline.reuse import REUSED, reuse_stages
from .store import normalize_uri, open_store

_TOP_KEYS = ("name", "config", "overrides", "variants", "pending", "axes", "differences")
_VARIANT_KEYS = ("overrides", "model", "from")
# Averaged over, not a row: the literature's mean ± std is over splits (and seeds).
REPEAT_KEYS = ("data.split", "seed")
EVALS = ("knn", "linear")  # every run has these; evaluate.extra_probes add columns where a finished cell has them
FLOORS = {"random": "random encoder (floor)", "pixels": "raw pixels (floor)"}
MODELS = (*MODEL_STAGES, *FLOORS)  # what a variant may report


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...] = ()
    model: str = "base"
    source: str | None = None  # `from`: report this model of another variant's cells


@dataclass(frozen=True)
class Cell:
    id: str
    variant: str
    values: tuple[tuple[str, Any], ...]  # (full config key, value) per axis, in axis order
    overrides: tuple[str, ...]  # experiment, variant, grid, then axis overrides: later ones win
    pending: bool


@dataclass(frozen=True)
class Experiment:
    name: str
    path: str
    config: str
    variants: dict[str, Variant]
    axes: tuple[str, ...]  # every axis key, in order of first appearance
    cells: tuple[Cell, ...] = field(default=())
    differences: tuple[Difference, ...] = ()  # the paired differences the report gives (lt_ssl/differences.py)


def _slug(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = re.sub(r"[^a-z0-9]+", "-", str(value).lower().replace(".", "p")).strip("-")
    return text or "x"


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise ConfigError(f"{where} must be a list of key=value strings, e.g. [cluster.k=1]")
    for item in value:
        _resolve_key(item.split("=", 1)[0].strip())  # the config loader's own error for an unknown key
    return tuple(value)


def load_experiment(path: str | Path) -> Experiment:
    """Parse and check an experiment file; raises ConfigError with one line naming the problem."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"experiment file {path} does not exist; see experiments/ for examples") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"experiment file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"experiment file {path} must hold a YAML mapping with keys {', '.join(_TOP_KEYS)}")
    unknown = sorted(set(raw) - set(_TOP_KEYS))
    if unknown:
        raise ConfigError(f"unknown experiment key {unknown[0]!r} in {path}; known keys: {', '.join(_TOP_KEYS)}")
    name, config = raw.get("name"), raw.get("config")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", name):
        raise ConfigError(f"experiment `name` must be lower-case letters, digits, '_' or '-', got {name!r}")
    if not isinstance(config, str) or not config:
        raise ConfigError("experiment `config` must name the base run config file, e.g. configs/quickstart.yaml")
    common = _strings(raw.get("overrides"), "experiment `overrides`")

    variants: dict[str, Variant] = {}
    for vname, spec in (raw.get("variants") or {"default": {}}).items():
        spec = spec or {}
        if not isinstance(spec, dict) or set(spec) - set(_VARIANT_KEYS):
            raise ConfigError(f"variant {vname!r} must be a mapping with keys {', '.join(_VARIANT_KEYS)}")
        model = spec.get("model", "base")
        if model not in MODELS:
            raise ConfigError(f"variant {vname!r}: model must be one of {', '.join(MODELS)}, got {model!r}")
        if "from" in spec and "overrides" in spec:
            raise ConfigError(f"variant {vname!r}: `from` reuses another variant's cells and takes no overrides")
        variants[str(vname)] = Variant(str(vname), _strings(spec.get("overrides"), f"variant {vname!r} overrides"),
                                       model, spec.get("from"))
    for v in variants.values():
        if v.source is not None and (v.source not in variants or variants[v.source].source is not None):
            raise ConfigError(f"variant {v.name!r}: `from: {v.source}` must name a variant with its own cells")
    pending = raw.get("pending") or []
    if not isinstance(pending, list) or any(p not in variants for p in pending):
        raise ConfigError(f"experiment `pending` must list variant names among: {', '.join(variants)}")

    grids = raw.get("axes") or {}
    grids = grids if isinstance(grids, list) else [grids]
    axis_keys: list[str] = []
    resolved_grids = []
    for grid in grids:
        if not isinstance(grid, dict):
            raise ConfigError("experiment `axes` must map config keys to lists of values (or be a list of such maps)")
        only = grid.get("variants", list(variants))
        if not isinstance(only, list) or any(v not in variants for v in only):
            raise ConfigError(f"an axes grid's `variants` must list variant names among: {', '.join(variants)}")
        grid_overrides = _strings(grid.get("overrides"), "an axes grid's `overrides`")
        resolved = {}
        for key, values in grid.items():
            if key in ("variants", "overrides"):
                continue
            full = _resolve_key(str(key))  # "unknown config key 'x'" straight from the config loader
            if not isinstance(values, list) or not values:
                raise ConfigError(f"axis {key!r} must be a non-empty list of values, got {values!r}")
            if any(isinstance(v, (dict, list)) for v in values):
                raise ConfigError(f"axis {key!r} values must be plain scalars, got {values!r}")
            resolved[full] = values
            if full not in axis_keys:
                axis_keys.append(full)
        resolved_grids.append((resolved, only, grid_overrides))

    cells: list[Cell] = []
    seen: dict[str, str] = {}
    for v in variants.values():
        if v.source is not None:
            continue
        for grid, only, grid_overrides in resolved_grids or [({}, list(variants), ())]:
            if v.name not in only:
                continue
            for combo in product(*grid.values()):
                values = tuple(zip(grid, combo))
                cid = "--".join([_slug(v.name)] + [f"{_slug(k.rsplit('.', 1)[-1])}-{_slug(x)}" for k, x in values])
                where = f"variant {v.name!r} {dict(values)}"
                if cid in seen:
                    raise ConfigError(f"duplicate cell id {cid!r} ({seen[cid]} and {where}); make the variants' "
                                      "names or the axis values distinct")
                seen[cid] = where
                axis_overrides = tuple(f"{k}={_yaml_scalar(x)}" for k, x in values)
                cells.append(Cell(cid, v.name, values, common + v.overrides + grid_overrides + axis_overrides,
                                  v.name in pending))
    diffs = differences.parse(raw.get("differences"), list(variants))
    for d in diffs:
        if d.by != "variant" and d.by not in axis_keys:
            raise ConfigError(f"`differences` by {d.by}: not an axis of this experiment ({', '.join(axis_keys)})")
    return Experiment(name, str(path), config, variants, tuple(axis_keys), tuple(cells), diffs)


def _yaml_scalar(value: Any) -> str:
    return value if isinstance(value, str) else yaml.safe_dump(value).splitlines()[0]


# ------------------------------------------------------------------------------------------------ run


def cell_uri(prefix: str, cell: Cell) -> str:
    return f"{normalize_uri(prefix)}/{cell.id}"


_TAGGED = re.compile(r"^\[(?P<cell>[^\]]+)\] (?P<text>.*)$")


def tagged(cell_id: str, text: str) -> str:
    """A line of the experiment runner's log: the cell's id, then the cell's own line (log_metrics reads it back)."""
    return f"[{cell_id}] {text}"


def run_uris(prefix: str) -> list[str]:
    """The runs directly under an experiment prefix (each folder with a config.yaml), as run URIs."""
    return [f"{normalize_uri(prefix)}/{key.split('/', 1)[0]}" for key in open_store(prefix).list()
            if key.count("/") == 1 and key.endswith(f"/{CONFIG_KEY}")]


def run_experiment(exp: Experiment, prefix: str, parallel: int = 1, device: str | None = None,
                   debug: bool = False, cells: Sequence[str] = (), reuse_from: Sequence[str] = ()) -> int:
    """Every non-pending cell as an `lt-ssl run`, `parallel` at a time with the cores shared between them.

    `cells`: shell patterns of cell ids (`*imbalance-100--split-0`); only matching cells run, so a grid too big
    for one machine can be filled a slice at a time and reported as it fills. Before a cell runs, it takes the
    finished training stages of a run that trains the same models (pipeline/reuse.py): another cell of this
    experiment, or a run under one of the `reuse_from` prefixes (another experiment's)."""
    if parallel < 1:
        raise LtSslError(f"--parallel must be >= 1, got {parallel}")
    chosen = [c for c in exp.cells if not cells or any(fnmatch.fnmatchcase(c.id, pat) for pat in cells)]
    if not chosen:
        raise LtSslError(f"--cells {' '.join(cells)} matches no cell of {exp.name}; `lt-ssl experiment list` "
                         "shows the ids")
    todo, configs = [], {}
    for cell in chosen:  # every config is checked before the first cell starts
        if cell.pending:
            print(f"[{cell.id}] pending (variant {cell.variant!r} listed under `pending`); not run", file=sys.stderr)
            continue
        cfg = load_config(exp.config, list(cell.overrides))
        if is_done(open_store(cell_uri(prefix, cell)), "evaluate", config_hash(cfg)):
            print(f"[{cell.id}] finished; skipping", file=sys.stderr)
            continue
        todo.append(cell)
        configs[cell.id] = cfg
    donors = [cell_uri(prefix, c) for c in exp.cells if not c.pending] + [u for p in reuse_from for u in run_uris(p)]
    pool = max(1, min(parallel, len(todo)))
    threads = max(1, cores() // pool)  # as the local runner does: share the cores, do not oversubscribe
    stop = ForwardStop()  # SIGTERM or Ctrl-C stops each running cell's runner, which stops its stages at a checkpoint

    def one(cell: Cell) -> int:
        uri = cell_uri(prefix, cell)
        reused = reuse_stages(open_store(uri), configs[cell.id], donors)
        if reused.tasks:
            print(tagged(cell.id, f"reused {', '.join(reused.tasks)} from {reused.donor} (it trains the same models)"),
                  file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "lt_ssl", "run", "--config", exp.config, "--run", uri]
        cmd += (["--device", device] if device else []) + (["--debug"] if debug else []) + list(cell.overrides)
        proc = stop.start(lambda: subprocess.Popen(cmd, env=os.environ | {"LT_SSL_THREADS": str(threads)},
                                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        if proc is None:
            return EXIT_PREEMPTED
        print(tagged(cell.id, f"running ({threads} threads)"), file=sys.stderr, flush=True)
        # The cell's own lines, each tagged with its id, as Argo's log view tags a pod's: cells run side by side.
        with proc:
            for line in proc.stdout:
                print(tagged(cell.id, line), end="", file=sys.stderr, flush=True)
        stop.release(proc)
        print(tagged(cell.id, "done" if proc.returncode == 0 else f"failed (exit {proc.returncode})"),
              file=sys.stderr, flush=True)
        return proc.returncode

    with stop, ThreadPoolExecutor(pool) as ex:
        codes = list(ex.map(one, todo))
    if stop.stopping and any(codes):
        print(f"lt-ssl: {stop.signal_name}: stopped, each running cell at a checkpoint; rerun the same command to "
              "resume", file=sys.stderr)
        return EXIT_PREEMPTED
    failed = [c.id for c, code in zip(todo, codes) if code != 0]
    if failed:
        print(f"lt-ssl: {len(failed)} of {len(todo)} cells failed ({', '.join(failed)}); rerun the same command "
              "to resume them", file=sys.stderr)
        return next(code for code in codes if code != 0)
    return 0


# --------------------------------------------------------------------------------------------- report


def cell_metrics(exp: Experiment, prefix: str) -> dict[str, dict | None]:
    """Cell id -> its evaluate/metrics.json, or None while the cell has not finished."""
    out: dict[str, dict | None] = {}
    for cell in exp.cells:
        store = open_store(cell_uri(prefix, cell))
        out[cell.id] = store.read_json("evaluate/metrics.json") if store.exists("evaluate/_SUCCESS.json") else None
    return out


def log_metrics(exp: Experiment, text: str) -> dict[str, dict | None]:
    """cell_metrics read back from an experiment runner's log, for cells whose folders are gone.

    A cell's evaluate stage prints a score line per model as it finishes it (top-1 per evaluation), and at the end
    the run prints the results table (every group); a table row wins over a score line. A model the log never
    scored is absent from its cell's "models", and a cell with no scored model is None (not finished).
    """
    models: dict[str, dict[str, dict]] = {}
    for line in text.splitlines():
        m = _TAGGED.match(line)
        if m is None:
            continue
        by_model = models.setdefault(m["cell"], {})
        if (row := parse_results_row(m["text"])) is not None:
            model, evaluation, rep = row
            by_model.setdefault(model, {})[evaluation] = rep
        elif (scores := parse_score_line(m["text"])) is not None:
            model, top1 = scores
            for evaluation, acc in top1.items():
                by_model.setdefault(model, {}).setdefault(evaluation, {g: None for g in GROUPS} | {"top1": acc})
    return {c.id: {"models": models[c.id]} if models.get(c.id) else None for c in exp.cells}


def cell_successes(exp: Experiment, prefix: str) -> dict[str, dict[str, dict]]:
    """Finished cell id -> {stage task prefix ("pretrain", "expert/0"): its _SUCCESS.json}: what each stage took
    (wall seconds of its process, which depend on the machine and its load) and the code that ran it."""
    out: dict[str, dict[str, dict]] = {}
    for cell in exp.cells:
        store = open_store(cell_uri(prefix, cell))
        if not store.exists(f"evaluate/{SUCCESS}"):
            continue
        out[cell.id] = {key.rsplit("/", 1)[0]: store.read_json(key) for key in store.list() if key.endswith(f"/{SUCCESS}")}
    return out


def stage_seconds(successes: dict[str, dict[str, dict]]) -> dict[str, dict[str, float]]:
    """Cell id -> {stage: seconds}, an expert stage's tasks summed."""
    out: dict[str, dict[str, float]] = {}
    for cid, by_task in successes.items():
        seconds: dict[str, float] = {}
        for task, success in by_task.items():
            stage = task.split("/", 1)[0]
            seconds[stage] = seconds.get(stage, 0.0) + float(success.get("seconds") or 0.0)
        out[cid] = seconds
    return out


def _counted(labels: Sequence[str]) -> str:
    """'a (2 cells), b (1 cell)': each label with how many cells have it, most first."""
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(f"{k} ({n} cell{'s' if n != 1 else ''})" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def code_line(successes: dict[str, dict[str, dict]]) -> str:
    """Which code made the finished cells: each git commit (short) with its count of cells; a cell whose stages ran
    under several commits (resumed after an update) counts under all of them, joined by '+'."""
    made = _counted(["+".join(c[:7] for c in sorted({(s.get("provenance") or {}).get("git_commit") or "unknown"
                                                    for s in by_task.values()}))
                     for by_task in successes.values()])
    return f"Code: git commit {made}." if made else "Code: no finished cell yet."


def cell_devices(successes: dict[str, dict[str, dict]], named: bool = False) -> dict[str, str]:
    """Finished cell id -> the device its stages ran on: the type ("cpu", "cuda"), or with `named` the hardware
    where the records name it ("cuda (NVIDIA H200)"); several joined by '+'. Records older than the name have the
    type alone."""
    def label(success: dict) -> str:
        kind = str(success.get("device") or "unknown").split(":", 1)[0]
        name = success.get("device_name")
        return f"{kind} ({name.removeprefix('cpu: ')})" if named and name else kind

    def labels(by_task: dict[str, dict]) -> str:
        found = {label(s) for s in by_task.values()}
        # a record older than device_name is taken to be the named one of its type, where the cell has one
        found -= {kind for kind in found if any(other.startswith(f"{kind} (") for other in found)}
        return "+".join(sorted(found))

    return {cid: labels(by_task) for cid, by_task in successes.items()}


def device_line(successes: dict[str, dict[str, dict]]) -> str:
    """Which devices ran the finished cells, with their counts of cells. CUDA stages run in bf16, CPU ones in
    float32: numbers from different devices differ by as much as methods do, so compare within one."""
    ran = _counted(list(cell_devices(successes, named=True).values()))
    return f"Device: {ran}." if ran else "Device: no finished cell yet."


def evals_in(metrics: dict[str, dict | None]) -> tuple[str, ...]:
    """EVALS, then any other evaluation (evaluate.extra_probes: linear_p1, finetune, ...) a finished cell reports."""
    found = list(EVALS)
    for m in metrics.values():
        for by_eval in (m or {}).get("models", {}).values():
            found += [e for e in by_eval if e not in found]
    return tuple(sorted(found, key=eval_order))


def aggregate(exp: Experiment, metrics: dict[str, dict | None], evals: Sequence[str] = EVALS,
              seconds: dict[str, dict[str, float]] | None = None,
              devices: dict[str, str] | None = None) -> list[dict]:
    """Report rows: one per variant x non-repeat axis values, then the two floors per axis values.

    Each row: {"row", "variant", "model", axis values..., "finished", "total", "status", "train_minutes", and for
    each eval and group "<eval>_<group>": (mean, std) in [0, 1] over the finished cells that report it, None where
    none does (a probe not run, or not applicable to the model: null in metrics.json)}. train_minutes: the mean
    over finished cells of the minutes of the stages that trained the row's model (contract.training_stages; from
    `seconds`, stage_seconds' map), None for the floors or without `seconds`; "device": the devices of its
    finished cells (`devices`, cell_devices' map), "" without it.
    """
    row_axes = [k for k in exp.axes if k not in REPEAT_KEYS]
    configs = {c.id: load_config(exp.config, list(c.overrides)) for c in exp.cells if not c.pending}
    groups: dict[tuple, list[Cell]] = {}
    for cell in exp.cells:
        key = tuple(dict(cell.values).get(k, "") for k in row_axes)  # "": the base config's value
        groups.setdefault(key, []).append(cell)

    def row(label: str, variant: str, model: str, key: tuple, cells: list[Cell], pending: bool) -> dict:
        # A cell counts for the models it scored (a cell read from a log may have stopped inside its evaluate stage).
        finished = [c for c in cells if metrics.get(c.id) is not None and model in metrics[c.id]["models"]]
        done = [metrics[c.id] for c in finished]
        r: dict[str, Any] = {"row": label, "variant": variant, "model": model, **dict(zip(row_axes, key)),
                             "finished": len(done), "total": len(cells)}
        r["status"] = ("pending: method not registered yet" if pending else
                       "not yet run" if not done else "partial" if len(done) < len(cells) else "done")
        timed = [c for c in cells if c.id in (seconds or {})] if model in MODEL_STAGES else []  # floors: none
        per_cell = [sum(seconds[c.id].get(stage, 0.0)
                        for stage in training_stages(configs[c.id], model))
                    for c in timed]
        r["train_minutes"] = statistics.fmean(per_cell) / 60 if per_cell else None
        r["repeats"] = {}  # repeat key (split, seed) -> "<eval>_<group>" -> accuracy: the paired differences' input
        r["repeat_devices"] = {}  # repeat key -> its cell's device, "" unknown: a pair across devices is flagged
        for c in finished:
            by_eval = metrics[c.id]["models"][model]
            repeat = tuple(dict(c.values).get(k, "") for k in REPEAT_KEYS)
            r["repeats"][repeat] = {f"{e}_{g}": (by_eval.get(e) or {}).get(g) for e in evals for g in GROUPS}
            r["repeat_devices"][repeat] = (devices or {}).get(c.id, "")
        r["device"] = "+".join(sorted({d for ds in r["repeat_devices"].values() for d in ds.split("+")} - {""}))
        for e in evals:
            for g in GROUPS:
                values = [rep[f"{e}_{g}"] for rep in r["repeats"].values() if rep[f"{e}_{g}"] is not None]
                r[f"{e}_{g}"] = mean_std(values) if values else None
        return r

    rows = []
    for key, cells in groups.items():
        for v in exp.variants.values():
            own = [c for c in cells if c.variant == (v.source or v.name)]
            if v.source is not None:  # another model of those cells: only where they train it
                own = [c for c in own
                       if c.pending or v.model in trained_models(configs[c.id])]
            if own:
                pending = own[0].pending
                rows.append(row(v.name, v.name, v.model, key, [] if pending else own, pending))
                if pending:
                    rows[-1]["total"] = len(own)
        rows += floor_rows(key, [c for c in cells if not c.pending], configs, metrics, row)
    return rows


def floor_rows(key: tuple, cells: list[Cell], configs: dict[str, Config], metrics: dict[str, dict | None],
               row: Callable[..., dict]) -> list[dict]:
    """The floors of one row group: raw pixels, and an untrained encoder of each backbone its variants train.

    The cells of a group share data, seeds and splits, so each floor comes from the variant with the most finished
    cells (the first such; on that backbone, for the random encoder). A group whose variants all use one
    backbone gets the two plain floor rows.
    """
    by_backbone: dict[str, list[Cell]] = {}
    for c in cells:
        by_backbone.setdefault(configs[c.id].backbone, []).append(c)

    def source(candidates: list[Cell]) -> list[Cell]:
        variants = list(dict.fromkeys(c.variant for c in candidates))
        finished = {v: sum(metrics.get(c.id) is not None for c in candidates if c.variant == v) for v in variants}
        chosen = max(variants, key=finished.__getitem__, default=None)  # max keeps the first of equals
        return [c for c in candidates if c.variant == chosen]

    out = [row(FLOORS["random"] if len(by_backbone) < 2 else f"random encoder, {backbone} (floor)", "floor",
               "random", key, source(bb_cells), False) for backbone, bb_cells in by_backbone.items()]
    out.append(row(FLOORS["pixels"], "floor", "pixels", key, source(cells), False))
    if not by_backbone:  # every variant pending: the floor rows still show, as not yet run
        out.insert(0, row(FLOORS["random"], "floor", "random", key, [], False))
    return out


def compute_line(successes: dict[str, dict[str, dict]]) -> str:
    """The experiment's cost so far: its finished cells and the stage time they took in all. A stage copied from
    another run (pipeline/reuse.py) cost nothing here: it is counted where it ran, not again."""
    records = [s for by_task in successes.values() for s in by_task.values()]
    reused = [s for s in records if REUSED in s]
    total_h = sum(float(s.get("seconds") or 0.0) for s in records if REUSED not in s) / 3600
    note = f"; {len(reused)} stage tasks reused from other runs are not counted" if reused else ""
    return (f"Compute so far: {len(successes)} finished cells, {total_h:.1f} h of stage time in all (the sum of every "
            f"stage process's wall time; cells that ran side by side overlap in wall-clock time{note}).")


def report_markdown(exp: Experiment, rows: list[dict], evals: Sequence[str] = EVALS,
                    successes: dict[str, dict[str, dict]] | None = None, source: str | None = None,
                    entries: list[dict] | None = None) -> str:
    """The report as markdown: with `successes` (cell_successes), the compute and code lines too; with `source`,
    a line saying where the numbers came from; `entries`: the paired differences if already computed."""
    row_axes = [k for k in exp.axes if k not in REPEAT_KEYS]
    by_device = len({r["device"] for r in rows} - {""}) > 1  # a column only where the table mixes devices
    head = ["row", *row_axes, "cells done", *(["device"] if by_device else []), "train min",
            *[f"{e} {g if g != 'top1' else 'all'}" for e in evals for g in GROUPS]]
    lines = [f"# Experiment `{exp.name}`", "",
             f"Top-1 accuracy (%) on the test set, mean ± sample std over {' and '.join(REPEAT_KEYS)}; "
             "many/medium/few by the long-tailed pre-training subset's class counts. "
             "train min: minutes of the stages that trained the row's model, mean over its finished cells (each "
             "stage process's wall time, so it depends on the machine, its load and the threads a cell had). "
             f"Base config `{exp.config}`; experiment file `{exp.path}`.", "",
             *([source, ""] if source else []),
             *([compute_line(successes), code_line(successes), device_line(successes), ""]
               if successes is not None else []),
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        done = f"{r['finished']}/{r['total']}" + ("" if r["status"] in ("done", "partial") else f" ({r['status']})")
        minutes = "–" if r["train_minutes"] is None else f"{r['train_minutes']:.0f}"
        cells = [fmt_points(r[f"{e}_{g}"]) for e in evals for g in GROUPS]
        device = [r["device"] or "–"] if by_device else []
        lines.append("| " + " | ".join([r["row"], *[str(r[k]) for k in row_axes], done, *device, minutes, *cells])
                     + " |")
    if entries is None:
        entries = differences.paired(exp.differences, rows, row_axes, evals)
    paired = differences.markdown(entries, row_axes, evals)
    return "\n".join(lines) + "\n" + (f"\n{paired}" if paired else "")


def report_csv(exp: Experiment, rows: list[dict], evals: Sequence[str] = EVALS) -> str:
    row_axes = [k for k in exp.axes if k not in REPEAT_KEYS]
    cols = ["row", "variant", "model", *row_axes, "finished", "total", "status", "device", "train_minutes"]
    stats = [f"{e}_{g}_{s}" for e in evals for g in GROUPS for s in ("mean", "std")]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols + stats)
    for r in rows:
        vals = [v for e in evals for g in GROUPS for v in csv_mean_std(r[f"{e}_{g}"])]
        w.writerow([(f"{r[c]:.2f}" if c == "train_minutes" and r[c] is not None else r[c]) for c in cols] + vals)
    return buf.getvalue()


def report(exp: Experiment, prefix: str | None, out_dir: str | Path, log: str | Path | None = None) -> list[dict]:
    """Write <out>/<name>.md, .csv and .png from the finished cells under prefix, or from an experiment runner's
    log (log_metrics) for cells whose folders are gone; returns the rows."""
    from .plots import experiment_bars_png

    if log is not None:
        metrics, successes = log_metrics(exp, Path(log).read_text()), None
        source = (f"Read from the runner's log `{log}`, not from the cells' folders: a model counts where its cell's "
                  "evaluate stage printed its score; many/medium/few only where the cell printed its results table "
                  "(a cell cut off inside evaluate has top-1 alone). No stage times, code versions or devices.")
    else:
        metrics, successes, source = cell_metrics(exp, prefix), cell_successes(exp, prefix), None
    evals = evals_in(metrics)
    rows = aggregate(exp, metrics, evals, None if successes is None else stage_seconds(successes),
                     None if successes is None else cell_devices(successes))
    row_axes = [k for k in exp.axes if k not in REPEAT_KEYS]
    entries = differences.paired(exp.differences, rows, row_axes, evals)  # the extra probes' too, where run
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{exp.name}.md").write_text(report_markdown(exp, rows, evals, successes, source, entries)
                                        + f"\n![{exp.name}]({exp.name}.png)\n")
    (out / f"{exp.name}.csv").write_text(report_csv(exp, rows, evals))
    if exp.differences:
        (out / f"{exp.name}_differences.csv").write_text(differences.csv_text(entries, row_axes, evals))
    labels = [" ".join([r["row"], *[f"{k.rsplit('.', 1)[-1]}={r[k]}" for k in row_axes]]) for r in rows]
    (out / f"{exp.name}.png").write_bytes(experiment_bars_png(
        {lab: {e: r[f"{e}_top1"] for e in EVALS} for lab, r in zip(labels, rows)}))
    return rows


# ---------------------------------------------------------------------------------------------- Argo


def workflow(exp: Experiment) -> dict:
    """The grid as one Argo Workflow: a `grid` task per plan fans out one pipeline DAG per runnable cell."""
    from hera.workflows import DAG, Parameter, Task, Workflow

    from .pipeline import argo

    runnable = [c for c in exp.cells if not c.pending]
    if not runnable:
        raise ConfigError(f"experiment {exp.name} has no runnable cells (all variants pending)")
    # A cell runs the stage graph its config names (the recipe, or the plain method): one pipeline DAG per plan.
    by_plan: dict[str, list[Cell]] = {}
    for c in runnable:
        by_plan.setdefault(load_config(exp.config, list(c.overrides)).plan, []).append(c)
    dags, grids, templates = [], [], {}
    for plan_name, cells in by_plan.items():
        plan = PLANS[plan_name]
        suffix = "" if len(by_plan) == 1 else f"-{plan_name}"
        tasks = argo.pipeline_tasks(plan, argo.inp("run"), argo.inp("config"), argo.inp("overrides"), argo.inp("variant"))
        stage_templates = argo.stage_templates(plan)
        if suffix:  # plans declare the same stage differently (evaluate's outputs): each plan its own templates
            for t in (*tasks, *stage_templates):
                if isinstance(t, Task):
                    t.template = f"{plan_name}-{t.template}"
                else:
                    t.name = f"{plan_name}-{t.name}"
        dags.append(DAG(
            name=f"pipeline{suffix}", fail_fast=False,
            inputs=[Parameter(name=n) for n in ("run", "config", "overrides", "variant")], tasks=tasks,
        ))
        grids.append(Task(name=f"grid{suffix}", template=f"pipeline{suffix}",
                          with_items=[{"name": c.id, "overrides": " ".join(c.overrides)} for c in cells], arguments={
            "run": "s3://{{workflow.parameters.bucket}}/runs/{{workflow.parameters.run-id}}/{{item.name}}",
            "config": argo.CONFIG,
            "overrides": "{{item.overrides}} {{workflow.parameters.overrides}}",  # the user's last, so they win
            "variant": "{{item.name}}",
        }))
        templates |= {t.name: t for t in stage_templates}
    kind = f"experiment-{exp.name.replace('_', '-')}"
    wf = Workflow(
        generate_name=f"{kind}-",
        labels=argo.LABELS | {"app.kubernetes.io/component": kind},
        entrypoint="main",
        arguments=argo.parameters(f"{argo.CONFIGS}/{Path(exp.config).name}"),
        templates=[argo.main_dag(grids), *dags, *templates.values(), *argo.exit_handler(kind)],
        **argo.common_spec(kind, deadline_s=7 * 86400),
    )
    return argo.to_dict(wf)


def render_workflow(exp: Experiment) -> str:
    from .pipeline import argo

    text = argo.render(workflow(exp))
    return text.replace("generated by `python -m lt_ssl.pipeline.argo` from lt_ssl/pipeline/plan.py",
                        f"generated by `lt-ssl experiment render {exp.path}`")


# ------------------------------------------------------------------------------------------------ CLI


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `experiment run|list|report|render` on the CLI's subparsers."""
    p = subparsers.add_parser("experiment", help="a grid of runs from one experiments/*.yaml: run, list, report")
    sub = p.add_subparsers(dest="experiment_command", required=True)
    r = sub.add_parser("run", help="run every cell (finished cells are skipped), --parallel at a time")
    r.add_argument("--parallel", type=int, default=1, help="cells run at once; the cores are shared between them")
    r.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: the config's)")
    r.add_argument("--cells", nargs="+", default=(), metavar="PATTERN",
                   help="run only the cells whose id matches one of these shell patterns (default: all)")
    r.add_argument("--reuse-from", nargs="+", default=(), metavar="PREFIX",
                   help="other experiments' prefixes whose runs a cell may take its finished training stages from "
                        "(this experiment's own cells always count)")
    ls = sub.add_parser("list", help="the cells: id, variant, overrides; with --prefix, whether each has finished")
    rep = sub.add_parser("report", help="mean ± std over splits and seeds as markdown, CSV and PNG")
    rep.add_argument("--out", default=None, help="folder for <name>.md/.csv/.png (default results/<name>)")
    ren = sub.add_parser("render", help="write the grid as an Argo workflow, workflows/experiment_<name>.yaml")
    ren.add_argument("--out", default=None, help="output file (default workflows/experiment_<name>.yaml)")
    ren.add_argument("--check", action="store_true", help="do not write: exit 1 if the file differs")
    prefix_help = "where the cells' runs live: file:///abs/path or s3://bucket/prefix"
    source = rep.add_mutually_exclusive_group(required=True)
    source.add_argument("--prefix", help=prefix_help)
    source.add_argument("--from-log", metavar="LOG", default=None,
                        help="read the results from an `experiment run` log instead, for cells whose folders are gone")
    for q, needs_prefix in ((r, True), (ls, False), (rep, None), (ren, False)):
        q.add_argument("file", metavar="FILE", help="experiment YAML, e.g. experiments/exp1_imbalance.yaml")
        if needs_prefix or q is ls:
            q.add_argument("--prefix", required=needs_prefix, help=prefix_help)
        q.add_argument("--debug", action="store_true", help="show Python tracebacks")
    p.set_defaults(func=main, debug=False)
    return p


def main(args: argparse.Namespace) -> int:
    exp = load_experiment(args.file)
    if args.experiment_command == "run":
        return run_experiment(exp, args.prefix, args.parallel, args.device, args.debug, args.cells, args.reuse_from)
    if args.experiment_command == "list":
        done = cell_metrics(exp, args.prefix) if args.prefix else {}
        for c in exp.cells:
            state = "pending" if c.pending else ("finished" if done.get(c.id) else "not finished") if args.prefix else ""
            print(f"{c.id}\t{c.variant}\t{state}\t{' '.join(c.overrides)}".replace("\t\t", "\t"))
        print(f"{len(exp.cells)} cells ({sum(c.pending for c in exp.cells)} pending)", file=sys.stderr)
        return 0
    if args.experiment_command == "report":
        out_dir = Path(args.out or Path("results") / exp.name)
        report(exp, args.prefix, out_dir, log=args.from_log)
        print((out_dir / f"{exp.name}.md").read_text(), end="")
        return 0
    out = Path(args.out or Path("workflows") / f"experiment_{exp.name}.yaml")
    text = render_workflow(exp)
    if args.check:
        if not out.exists() or out.read_text() != text:
            print(f"lt-ssl: {out} is out of date: run `lt-ssl experiment render {args.file}`", file=sys.stderr)
            return 1
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0
