"""Strict offline validation of Argo objects: the CRD schemas with unknown fields as errors, plus
the semantic checks no schema makes (references resolve, parameters are declared, `lt-ssl` commands
parse with the real CLI parser). Used by tests/workflows and by `lt-ssl submit`.

The CRD schemas (Argo Workflows v4.1.2, Apache-2.0) are found through $LT_SSL_ARGO_SCHEMAS, else
`<repo>/../shared/schemas/argo-workflows-v4.1.2` (CI's fresh clone has shared/ beside it). They are
not vendored: the four CRDs are 11 MB of YAML.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from ..errors import LtSslError

SCHEMAS_ENV = "LT_SSL_ARGO_SCHEMAS"
ARGO_VERSION = "v4.1.2"
CRD_FILES = {
    "Workflow": "argoproj.io_workflows.yaml",
    "WorkflowTemplate": "argoproj.io_workflowtemplates.yaml",
    "ClusterWorkflowTemplate": "argoproj.io_clusterworkflowtemplates.yaml",
    "CronWorkflow": "argoproj.io_cronworkflows.yaml",
}
API_VERSION = "argoproj.io/v1alpha1"


class WorkflowValidationError(LtSslError):
    """An Argo object fails the schema or a semantic check; the message lists every problem."""

    def __init__(self, problems: list[str], source: str = "workflow"):
        self.problems = problems
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{source}: {problems[0]}{more}" if problems else source)


# ---------------------------------------------------------------------------------------- CRD schemas


def schemas_dir() -> Path | None:
    """Where the CRD YAMLs are: $LT_SSL_ARGO_SCHEMAS, else shared/ beside the repository."""
    env = os.environ.get(SCHEMAS_ENV)
    candidates = [Path(env)] if env else []
    repo = Path(__file__).resolve().parents[2]
    candidates += [repo.parent / "shared" / "schemas" / f"argo-workflows-{ARGO_VERSION}",
                   Path.cwd().parent / "shared" / "schemas" / f"argo-workflows-{ARGO_VERSION}"]
    for c in candidates:
        if (c / "crds" / CRD_FILES["Workflow"]).is_file():
            return c
    return None


def _strict(node: Any) -> Any:
    """An OpenAPI v3 (structural) schema as strict JSON Schema: unknown fields are errors unless the
    schema says x-kubernetes-preserve-unknown-fields; int-or-string and nullable spelled out."""
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == "properties":
            out[k] = {name: _strict(s) for name, s in v.items()}
        elif k in ("items", "not") or (k == "additionalProperties" and isinstance(v, dict)):
            out[k] = _strict(v)
        elif k in ("anyOf", "allOf", "oneOf"):
            out[k] = [_strict(s) for s in v]
        else:
            out[k] = v
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@functools.cache
def _crd(kind: str) -> dict:
    root = schemas_dir()
    if root is None:
        raise LtSslError(f"the Argo {ARGO_VERSION} CRD schemas were not found: set {SCHEMAS_ENV} to the folder "
                         f"holding crds/ (shared/schemas/argo-workflows-{ARGO_VERSION})")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(root / "crds" / CRD_FILES[kind]) as f:
        crd = yaml.load(f, Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v.get("storage", True))
    return version["schema"]["openAPIV3Schema"]


@functools.cache
def strict_schema(kind: str) -> dict:
    return _strict(_crd(kind))


def _path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


def schema_problems(obj: dict) -> list[str]:
    """Errors of `obj` against its kind's CRD schema, strictly (unknown fields included)."""
    try:
        import jsonschema
    except ImportError:
        raise LtSslError("validating Argo objects needs the argo extra: pip install 'lt-ssl[argo]'") from None

    kind = obj.get("kind") if isinstance(obj, dict) else None
    if kind not in CRD_FILES:
        return [f"kind {kind!r} is not an Argo kind ({', '.join(CRD_FILES)})"]
    problems = []
    if obj.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion must be {API_VERSION}, got {obj.get('apiVersion')!r}")
    meta = obj.get("metadata") or {}
    if not (meta.get("name") or (kind == "Workflow" and meta.get("generateName"))):
        problems.append("metadata needs a name" + (" or generateName" if kind == "Workflow" else ""))
    validator = jsonschema.Draft7Validator(strict_schema(kind))
    for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        problems.append(f"{_path(e.absolute_path)}: {e.message}")
    return problems


# ------------------------------------------------------------------------------------------ semantics

EXPR = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
# Argo sets these for every template, but they only mean something once the workflow has ended.
EXIT_ONLY_VARS = {"workflow.status", "workflow.failures"}
METRIC_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Argo's own name rules (workflow/validate): templates, tasks and steps; parameters.
FIELD_NAME = re.compile(r"^[a-zA-Z0-9][-a-zA-Z0-9]{0,127}$")
PARAM_NAME = re.compile(r"^[-a-zA-Z0-9_]+$")


def _spec(obj: dict) -> dict:
    spec = obj.get("spec") or {}
    return spec.get("workflowSpec", spec) if obj.get("kind") == "CronWorkflow" else spec


def _invocations(t: dict) -> list[dict]:
    """The tasks of a DAG template or the steps of a steps template."""
    if "dag" in t:
        return list((t["dag"] or {}).get("tasks") or [])
    if "steps" in t:
        return [s for group in t["steps"] or [] for s in (group or [])]
    return []


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def expressions(node: Any) -> Iterator[str]:
    """Every `{{...}}` variable in the strings under `node` (expression templates `{{=...}}` too)."""
    for s in _strings(node):
        yield from EXPR.findall(s)


def depends_names(depends: str) -> list[str]:
    """Task names in a `depends` expression: `a && (b.Succeeded || c)` -> [a, b, c]."""
    names = []
    for tok in re.findall(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", depends or ""):
        name = re.sub(r"\.(Succeeded|Failed|Errored|Skipped|Omitted|Daemoned|AnySucceeded|AllFailed)$", "", tok)
        names.append(name)
    return names


def _params(section: dict | None) -> dict[str, dict]:
    return {p["name"]: p for p in ((section or {}).get("parameters") or []) if isinstance(p, dict) and "name" in p}


# Plausible values for `{{inputs.parameters.<name>}}` when parsing a command offline.
# Each command is parsed once per alternative: the overrides default to "" (one empty argument).
PLAUSIBLE = {
    "run": ["s3://lt-ssl/runs/wf-abc12"],
    "cluster": ["0"],
    "config": ["/app/configs/quickstart.yaml"],
    "overrides": ["", "cluster.k=3 seed=1"],
    "baseline": ["/app/configs/regression_baseline.json"],
    "item": ["0"],
}


def substitute(text: str, values: dict[str, str], default: str | None = None) -> str:
    """Replace `{{var}}` by values[var]; unknown vars by `default` (or left alone if None)."""

    def rep(mt: re.Match) -> str:
        var = mt.group(1)
        if var in values:
            return values[var]
        return default if default is not None else mt.group(0)

    return EXPR.sub(rep, text)


def parse_cli(args: list[str]) -> tuple[argparse.Namespace | None, str]:
    """Parse `lt-ssl <args>` as `lt-ssl` itself does; (namespace, "") or (None, argparse's message)."""
    from .. import cli

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return cli.parse_args(args), ""
    except SystemExit:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        return None, lines[-1] if lines else "does not parse"


def retried(expression: str, exit_code: int) -> bool:
    """Evaluate a retryStrategy expression of the form our templates use, for one exit code."""
    py = expression.replace("asInt(lastRetry.exitCode)", str(exit_code)).replace("lastRetry.exitCode", f"'{exit_code}'")
    py = py.replace("&&", " and ").replace("||", " or ")
    py = re.sub(r"!(?!=)", " not ", py)
    if not re.fullmatch(r"[\d\s()'!=<>andornt]+", py):
        raise ValueError(f"retry expression {expression!r} uses more than exit-code comparisons")
    return bool(eval(py, {"__builtins__": {}}, {}))  # noqa: S307 - digits, comparisons and and/or/not only


def semantic_problems(obj: dict, registry: dict[str, dict] | None = None) -> list[str]:
    """Checks no schema makes, each held by a mutation test in tests/workflows/test_semantics.py.
    `registry`: WorkflowTemplate name -> object, for templateRef."""
    registry = registry or {}
    spec = _spec(obj)
    templates = {t.get("name"): t for t in spec.get("templates") or []}
    global_params = _params(spec.get("arguments"))
    problems = _name_problems(obj, spec)

    # Templates the exit handler reaches may read workflow.status and workflow.failures.
    exit_reach: set[str] = set()
    stack = [spec["onExit"]] if spec.get("onExit") else []
    while stack:
        name = stack.pop()
        if name in templates and name not in exit_reach:
            exit_reach.add(name)
            stack += [i.get("template") for i in _invocations(templates[name]) if i.get("template")]

    def resolve(inv: dict, where: str) -> dict | None:
        if "templateRef" in inv:
            ref = inv["templateRef"]
            other = registry.get(ref.get("name"))
            if other is None:
                problems.append(f"{where}: templateRef names WorkflowTemplate {ref.get('name')!r}, which is not known")
                return None
            callee = next((t for t in _spec(other).get("templates") or [] if t.get("name") == ref.get("template")), None)
            if callee is None:
                problems.append(f"{where}: WorkflowTemplate {ref.get('name')!r} has no template {ref.get('template')!r}")
            return callee
        callee = templates.get(inv.get("template"))
        if callee is None:
            problems.append(f"{where}: template {inv.get('template')!r} does not exist")
        return callee

    def check_var(var: str, where: str, inputs: dict, template: str | None, *, item: bool = False) -> None:
        parts = var.split(".")
        if var.startswith("workflow.parameters.") and parts[2] not in global_params:
            problems.append(f"{where}: {{{{{var}}}}} is not declared in spec.arguments")
        elif var in EXIT_ONLY_VARS and template is not None and template not in exit_reach:
            problems.append(f"{where}: {{{{{var}}}}} is only set in the onExit handler")
        elif var.startswith("inputs.parameters.") and parts[2] not in inputs:
            problems.append(f"{where}: {{{{{var}}}}} is not declared in the template's inputs")
        elif (var == "item" or var.startswith("item.")) and not item:
            problems.append(f"{where}: {{{{{var}}}}} outside a withItems/withParam task")

    for var in expressions(spec.get("arguments")):
        check_var(var, "spec.arguments", {}, None)
    for name, t in templates.items():
        where = f"template {name!r}"
        inputs = _params(t.get("inputs"))
        for field, value in t.items():
            if field not in ("dag", "steps"):
                for var in expressions(value):
                    check_var(var, f"{where}.{field}", inputs, name)

        # DAG tasks and steps: references, dependencies, arguments against the callee's inputs.
        invocations = _invocations(t)
        by_name = {inv.get("name"): resolve(inv, f"{where} task {inv.get('name')!r}") for inv in invocations}
        deps = {inv.get("name"): depends_names(inv.get("depends", "")) for inv in invocations}
        for task, ds in deps.items():
            problems += [f"{where} task {task!r}: depends on {d!r}, which is not a task here" for d in ds if d not in by_name]
        ancestors = _ancestors(deps)
        if "dag" in t and any(task in anc for task, anc in ancestors.items()):
            problems.append(f"{where}: the task dependencies form a cycle")
        for inv in invocations:
            iw = f"{where} task {inv.get('name')!r}"
            looped = any(k in inv for k in ("withItems", "withParam", "withSequence"))
            for var in expressions(inv):
                task = var.split(".")[1] if var.startswith("tasks.") else None
                if "dag" in t and task in by_name and task not in ancestors.get(inv.get("name"), set()):
                    problems.append(f"{iw}: {{{{{var}}}}} reads a task it does not depend on")
                check_var(var, iw, inputs, name, item=looped)
            callee = by_name.get(inv.get("name"))
            if callee is not None:
                given, wanted = _params(inv.get("arguments")), _params(callee.get("inputs"))
                problems += [f"{iw}: passes {a!r}, which {callee.get('name')!r} does not take" for a in given if a not in wanted]
                problems += [f"{iw}: does not pass {p!r}, which {callee.get('name')!r} needs" for p, d in wanted.items()
                             if p not in given and "value" not in d and "default" not in d]

        metric_shapes: dict[str, tuple] = {}
        for metric in (t.get("metrics") or {}).get("prometheus") or []:
            problems += _metric_problems(metric, where, metric_shapes)
        if (t.get("container") or {}).get("command") == ["lt-ssl"]:
            problems += _lt_ssl_problems(t, where, global_params, inputs)
    return problems + _fan_out_problems(templates)


def _lt_ssl_problems(t: dict, where: str, global_params: dict, inputs: dict) -> list[str]:
    """An `lt-ssl` container's args parse with the real CLI; its retries spare exit codes 2 and 3."""
    from ..errors import EXIT_BAD_INPUT, EXIT_COLLAPSE, EXIT_PREEMPTED, EXIT_STORAGE, EXIT_UNEXPECTED

    problems = []
    gvalues = {f"workflow.parameters.{k}": substitute(str(p.get("value", "x")), {"workflow.name": "wf-abc12"})
               for k, p in global_params.items()}
    options = {k: PLAUSIBLE.get(k, ["x"]) for k in inputs}
    for i in range(max((len(v) for v in options.values()), default=1)):
        values = gvalues | {f"inputs.parameters.{k}": v[min(i, len(v) - 1)] for k, v in options.items()}
        args = [substitute(a, values, default="x") for a in t["container"].get("args") or []]
        ns, err = parse_cli(args)
        if ns is None:
            problems.append(f"{where}: `lt-ssl {shlex.join(args)}` does not parse: {err}")
    expr = (t.get("retryStrategy") or {}).get("expression")
    if not expr:
        return problems + [f"{where}: an lt-ssl step needs a retryStrategy with an expression sparing exit codes 2 and 3"]
    try:
        problems += [f"{where}: retryStrategy retries exit code {c}, which no retry can fix"
                     for c in (EXIT_BAD_INPUT, EXIT_COLLAPSE) if retried(expr, c)]
        problems += [f"{where}: retryStrategy does not retry exit code {c}"
                     for c in (EXIT_UNEXPECTED, EXIT_STORAGE, EXIT_PREEMPTED) if not retried(expr, c)]
    except ValueError as e:
        problems.append(f"{where}: {e}")
    return problems


def _name_problems(obj: dict, spec: dict) -> list[str]:
    problems = []
    meta = obj.get("metadata") or {}
    limit = 52 if obj.get("kind") == "CronWorkflow" else 63  # a CronWorkflow's runs append "-<unix time>"
    name = meta.get("name") or meta.get("generateName", "") + "xxxxx"
    if len(name) > limit:
        problems.append(f"metadata name {name!r} is longer than {limit} characters")
    for sched in (obj.get("spec") or {}).get("schedules") or [] if obj.get("kind") == "CronWorkflow" else []:
        if len(sched.split()) != 5 and not sched.startswith("@"):
            problems.append(f"cron schedule {sched!r} needs 5 fields (minute hour day month weekday)")
    for t in spec.get("templates") or []:
        for inv in [t, *_invocations(t)]:
            if not FIELD_NAME.match(str(inv.get("name", ""))):
                problems.append(f"template {t.get('name')!r}: task/step name {inv.get('name')!r} is not a valid Argo name")
        for section in ("inputs", "outputs"):
            for p in ((t.get(section) or {}).get("parameters") or []):
                if not PARAM_NAME.match(str(p.get("name", ""))):
                    problems.append(f"template {t.get('name')!r}: parameter name {p.get('name')!r} must be letters, digits, '_' or '-'")
    return problems


def _ancestors(deps: dict[str, list[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for task in deps:
        seen: set[str] = set()
        stack = list(deps[task])
        while stack:
            d = stack.pop()
            if d not in seen:
                seen.add(d)
                stack += deps.get(d, [])
        out[task] = seen
    return out


def _metric_problems(metric: dict, where: str, shapes: dict[str, tuple]) -> list[str]:
    """Prometheus-valid names; one type, label set and help per name."""
    name = metric.get("name", "")
    problems = [] if METRIC_NAME.match(name) else [f"{where}: metric name {name!r} must be letters, digits and _ only"]
    kind = next((k for k in ("gauge", "counter", "histogram") if k in metric), None)
    shape = (kind, tuple(sorted(label.get("key") for label in metric.get("labels") or [])), metric.get("help"))
    if shapes.setdefault(name, shape) != shape:
        problems.append(f"{where}: metric {name!r} is declared elsewhere with another type, label set or help")
    return problems


def _fan_out_problems(templates: dict[str, dict]) -> list[str]:
    """A fan-out stage must iterate over its source stage's output parameter, read from the file that
    stage writes (the output option of `plan.Output`)."""
    from .plan import PLANS

    sources = {s.name: p.stage(s.fan_out) for p in PLANS.values() for s in p.stages if s.fan_out}
    problems = []
    for name, t in templates.items():
        tasks = {task.get("name"): task for task in _invocations(t)} if "dag" in t else {}
        for task in tasks.values():
            source = sources.get(task.get("template"))
            if source is None:
                continue
            where = f"template {name!r} task {task.get('name')!r}"
            mt = re.fullmatch(r"\{\{tasks\.([\w-]+)\.outputs\.parameters\.([\w-]+)\}\}", str(task.get("withParam", "")))
            if not mt:
                problems.append(f"{where}: a fan-out stage must iterate withParam over the {source.name} task's output parameter")
                continue
            src = tasks.get(mt.group(1))
            source_t = templates.get((src or {}).get("template"))
            if source_t is None or source_t.get("name") != source.name:
                problems.append(f"{where}: withParam reads task {mt.group(1)!r}, which does not run the {source.name} stage")
                continue
            args = (source_t.get("container") or {}).get("args") or []
            out = _params(source_t.get("outputs")).get(mt.group(2), {})
            flag = source.output.flag
            written = args[args.index(flag) + 1] if flag in args else None
            if written is None or (out.get("valueFrom") or {}).get("path") != written:
                problems.append(f"{where}: output {mt.group(2)!r} of the {source.name} template must be read from the "
                                f"{flag} file ({written})")
    return problems


# ------------------------------------------------------------------------------------------- entry points


def problems(obj: dict, registry: dict[str, dict] | None = None, *, schema: bool = True) -> list[str]:
    """All schema and semantic problems of one object (empty: valid)."""
    out = schema_problems(obj) if schema else []
    return out + semantic_problems(obj, registry)


def load_objects(path: str | Path) -> list[dict]:
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]
    except FileNotFoundError:
        raise LtSslError(f"{path} does not exist") from None
    except yaml.YAMLError as e:
        raise LtSslError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    for d in docs:
        if not isinstance(d, dict):
            raise LtSslError(f"{path}: every YAML document must be a mapping")
    return docs


def registry_of(objs: list[dict]) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o.get("kind") == "WorkflowTemplate" and o.get("metadata", {}).get("name")}


def check(obj: dict, registry: dict[str, dict] | None = None, source: str = "workflow") -> None:
    """Raise WorkflowValidationError listing every problem, or return. Without the CRD schemas at
    hand, the schema check is skipped with a note (the API server still validates on create)."""
    schema = schemas_dir() is not None
    if not schema:
        print(f"lt-ssl: note: Argo CRD schemas not found (set {SCHEMAS_ENV}); checked semantics only", file=sys.stderr)
    found = problems(obj, registry, schema=schema)
    if found:
        raise WorkflowValidationError(found, source)
