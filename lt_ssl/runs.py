"""`lt-ssl runs list ROOT_URI` and `lt-ssl runs show RUN_URI`: what runs exist and how far each got.

Reads only the stage contract's files, so it works on a local folder and on s3:// alike:
`RUN_URI/config.yaml` (whose `plan` names the stages to expect), `RUN_URI/<stage>/_SUCCESS.json`,
`RUN_URI/<stage>/<k>/_SUCCESS.json` for a fan-out stage and the list of ids it fans out over
(`cluster/clusters.json`: the non-empty clusters, i.e. the experts to expect).

A stage is `done` (its _SUCCESS.json carries the run's config hash), `stale` (a _SUCCESS.json from
another config hash), `incomplete` (outputs but no _SUCCESS.json yet: running, failed or killed)
or `missing` (nothing written).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

import yaml

from .errors import StageError
from .pipeline.contract import CONFIG_KEY as CONFIG, SUCCESS
from .pipeline.plan import PLANS, Plan
from .store import Store, open_store


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `runs list` and `runs show` on the CLI's subparsers; returns the `runs` parser."""
    p = subparsers.add_parser("runs", help="list runs under a folder/prefix, or show one run's stages")
    sub = p.add_subparsers(dest="runs_command", required=True)
    ls = sub.add_parser("list", help="the runs under ROOT_URI: id, stages done, created time")
    ls.add_argument("root", metavar="ROOT_URI",
                    help="folder or prefix holding runs: /abs/runs, file:///abs/runs, s3://bucket/runs")
    show = sub.add_parser("show", help="one run: config name and hash, each stage's status, outputs, duration")
    show.add_argument("run", metavar="RUN_URI", help="a run: file:///abs/runs/<id> or s3://bucket/runs/<id>")
    for q in (ls, show):
        q.add_argument("--json", action="store_true", help="print JSON instead of a table")
        q.add_argument("--debug", action="store_true", help="show Python tracebacks")
    p.set_defaults(func=main, debug=False)
    return p


def main(args: argparse.Namespace) -> int:
    if args.runs_command == "list":
        runs = list_runs(open_store(args.root))
        if args.json:
            print(json.dumps(runs, indent=2))
        else:
            print(format_list(runs, args.root))
        return 0
    if args.runs_command == "show":
        info = show_run(open_store(args.run))
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            print(format_show(info))
        return 0
    raise StageError(f"unknown runs command {args.runs_command!r}; use list or show")


# ------------------------------------------------------------------------------------ reading


def _created(store: Store, key: str) -> str | None:
    """The object's modification time as ISO 8601 UTC, where the backend can tell it."""
    ts: float | None = None
    root = getattr(store, "root", None)
    if root is not None:  # LocalStore
        try:
            ts = (root / key).stat().st_mtime
        except OSError:
            ts = None
    elif hasattr(store, "last_modified"):  # S3Store
        ts = store.last_modified(key)
    return _iso(ts) if ts is not None else None


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).replace(microsecond=0).isoformat()


def _plan(raw: Any) -> Plan:
    """The stages the run executes, derived from its config (contract.plan_of); from the plan name alone, without
    the optional stages, when the config no longer parses (the default plan when the key is absent or unknown)."""
    from .config import from_dict
    from .pipeline.contract import plan_of

    try:
        return plan_of(from_dict(raw))
    except Exception:  # noqa: BLE001 - an old or hand-edited config: still show the stages
        name = raw.get("plan") if isinstance(raw, dict) else None
        return PLANS.get(name, PLANS["recipe"]).for_run(set())


def _config_summary(store: Store) -> dict[str, Any]:
    """name, plan and hash of the run's config.yaml (hash None when it no longer parses)."""
    text = store.read_text(CONFIG)
    out: dict[str, Any] = {"name": None, "hash": None, "plan": PLANS["recipe"].name}
    try:
        raw = yaml.safe_load(text)
        out["plan"] = _plan(raw).name
        if isinstance(raw, dict):
            out["name"] = raw.get("name")
        from .config import config_hash, from_dict

        out["hash"] = config_hash(from_dict(raw))
    except Exception as e:  # noqa: BLE001 - an old or hand-edited config: still show the stages
        out["error"] = f"{type(e).__name__}: {e}".splitlines()[0]
    return out


def _stage_status(store: Store, keys: set[str], prefix: str, chash: str | None) -> dict[str, Any]:
    success = f"{prefix}/{SUCCESS}"
    if success not in keys:
        has_outputs = any(k.startswith(prefix + "/") for k in keys)
        return {"status": "incomplete" if has_outputs else "missing"}
    try:
        s = store.read_json(success)
    except (ValueError, UnicodeDecodeError) as e:
        return {"status": "incomplete", "error": f"unreadable {SUCCESS}: {e}"}
    status = "done" if chash is None or s.get("config_hash") == chash else "stale"
    return {
        "status": status,
        "config_hash": s.get("config_hash"),
        "outputs": len(s.get("outputs") or []),
        "seconds": s.get("seconds"),
        "started": s.get("started"),
        "finished": s.get("finished"),
    }


def _fan_out_ids(store: Store, keys: set[str], plan: Plan, stage: str, run: str = "") -> tuple[list[int], bool]:
    """A fan-out stage's expected ids (its source's list) plus any <stage>/<k>/ found; (ids, ids_known)."""
    pre = f"{run}/" if run else ""
    source = f"{pre}{plan.stage(plan.stage(stage).fan_out).output.source}"
    ids: set[int] = set()
    known = source in keys
    if known:
        try:
            ids.update(int(k) for k in store.read_json(source))
        except (ValueError, TypeError):
            known = False
    for k in keys:
        if k.startswith(f"{pre}{stage}/"):
            part = k[len(f"{pre}{stage}/"):].split("/", 1)[0]
            if part.isdigit():
                ids.add(int(part))
    return sorted(ids), known


def show_run(store: Store) -> dict[str, Any]:
    """Everything `runs show` prints, as a dict."""
    keys = set(store.list())
    if CONFIG not in keys:
        if not keys:
            raise StageError(f"{store.uri} holds no run (nothing there); check the URI, "
                             "or list runs with `lt-ssl runs list <parent>`")
        raise StageError(f"{store.uri} has no {CONFIG}: not a run folder (or its prepare stage never started)")
    config = _config_summary(store)
    chash = config["hash"]
    try:
        plan = _plan(yaml.safe_load(store.read_text(CONFIG)))
    except (yaml.YAMLError, UnicodeDecodeError):
        plan = _plan(None)
    stages: list[dict[str, Any]] = []
    for step in plan.stages:
        stage = step.name
        if not step.fan_out:
            stages.append({"stage": stage, "cluster": None, **_stage_status(store, keys, stage, chash)})
            continue
        ids, known = _fan_out_ids(store, keys, plan, stage)
        if not ids:
            stages.append({"stage": stage, "cluster": None, "status": "missing",
                           "note": "clusters not known yet" if not known else "no non-empty clusters"})
        for k in ids:
            stages.append({"stage": stage, "cluster": k, **_stage_status(store, keys, f"{stage}/{k}", chash)})
    return {"run": store.uri, "config": config, "created": _created(store, CONFIG), "stages": stages}


def list_runs(store: Store) -> list[dict[str, Any]]:
    """The runs directly under the store's root: [{id, uri, created, done: [...], stages_done, stages_total}]."""
    keys = store.list()
    by_run: dict[str, set[str]] = {}
    for k in keys:
        run, _, rest = k.partition("/")
        if rest:
            by_run.setdefault(run, set()).add(k)
    runs: list[dict[str, Any]] = []
    for run, rkeys in by_run.items():
        if f"{run}/{CONFIG}" not in rkeys:
            continue  # not a run folder
        try:
            plan = _plan(yaml.safe_load(store.read_text(f"{run}/{CONFIG}")))
        except (yaml.YAMLError, UnicodeDecodeError):
            plan = _plan(None)
        done = [s.name for s in plan.stages if not s.fan_out and f"{run}/{s.name}/{SUCCESS}" in rkeys]
        fanned = [s.name for s in plan.stages if s.fan_out]  # the recipe's experts; none in the plain plan
        ids, known, tasks_done = [], True, []
        for stage in fanned:
            ids, known = _fan_out_ids(store, rkeys, plan, stage, run)
            tasks_done = [k for k in ids if f"{run}/{stage}/{k}/{SUCCESS}" in rkeys]
        total = len(plan.stages) - len(fanned) + sum(len(ids) if known else 1 for _ in fanned)
        runs.append({
            "id": run,
            "uri": f"{store.uri.rstrip('/')}/{run}",
            "created": _created(store, f"{run}/{CONFIG}"),
            "plan": plan.name,
            "done": done,
            "experts_done": tasks_done,
            "experts_expected": (ids if known else None) if fanned else [],
            "stages_done": len(done) + len(tasks_done),
            "stages_total": total,
        })
    runs.sort(key=lambda r: (r["created"] or "", r["id"]))
    return runs


# ------------------------------------------------------------------------------------ printing


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def format_list(runs: list[dict[str, Any]], root: str) -> str:
    if not runs:
        return f"no runs under {root}"
    rows = []
    for r in runs:
        done = []
        for step in PLANS[r["plan"]].stages:
            if step.name in r["done"]:
                done.append(step.name)
            elif step.fan_out and (r["experts_expected"] or r["experts_done"]):
                n = len(r["experts_expected"]) if r["experts_expected"] is not None else "?"
                done.append(f"{step.name}[{len(r['experts_done'])}/{n}]")
        rows.append([r["id"], r["created"] or "-", f"{r['stages_done']}/{r['stages_total']}", ",".join(done) or "-"])
    return _table(["RUN", "CREATED", "DONE", "STAGES DONE"], rows)


def format_show(info: dict[str, Any]) -> str:
    cfg = info["config"]
    head = [
        f"run:     {info['run']}",
        f"config:  {cfg.get('name') or '?'} (hash {cfg.get('hash') or '?'}, plan {cfg['plan']})",
        f"created: {info['created'] or '-'}",
    ]
    if cfg.get("error"):
        head.append(f"warning: config.yaml does not load with this lt-ssl ({cfg['error']}); statuses ignore the hash")
    rows = []
    for s in info["stages"]:
        name = s["stage"] if s["cluster"] is None else f"{s['stage']}/{s['cluster']}"
        seconds = s.get("seconds")
        rows.append([
            name,
            s["status"] + (f" ({s['note']})" if s.get("note") else ""),
            str(s["outputs"]) if "outputs" in s else "-",
            f"{seconds:.1f}" if isinstance(seconds, (int, float)) else "-",
            (s.get("finished") or "-")[:19],
        ])
    return "\n".join(head) + "\n\n" + _table(["STAGE", "STATUS", "OUTPUTS", "SECONDS", "FINISHED"], rows)

