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
import copy
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
    return problems + cel_problems(obj)


# The CRDs' CEL rules, checked here by hand. tests/workflows/test_schema.py fails when the CRDs hold a
# rule this list does not know, so a schema upgrade cannot silently skip one.
KNOWN_CEL_RULES = {
    "at most one artifact location can be specified",
    "'resourcesDuration.*' metrics cannot be used in real-time gauges",
    "only one of count or end can be defined",
    "cannot use both 'depends' and 'dependencies'",
    "cannot use 'continueOn' when using 'depends'",
    "task name cannot begin with a digit when using 'depends' or 'dependencies'",
    "only one of manifest or manifestFrom can be specified",
    "template must have at most one template type",
    "timeout cannot be applied to steps or dag templates",
    "activeDeadlineSeconds is only valid for leaf templates",
}
_TEMPLATE_TYPES = ("container", "script", "dag", "steps", "resource", "suspend", "containerSet", "data", "http", "plugin")
_ARTIFACT_LOCATIONS = ("s3", "git", "http", "artifactory", "hdfs", "raw", "oss", "gcs", "azure", "plugin")


def cel_messages(kind: str) -> set[str]:
    """The message of every x-kubernetes-validations (CEL) rule in the CRD; the API server evaluates
    them, we cannot, so cel_problems re-implements each one."""
    msgs: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for r in node.get("x-kubernetes-validations", []):
                msgs.add(r.get("message", r["rule"]))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(_crd(kind))
    return msgs


def cel_problems(obj: dict) -> list[str]:
    spec = _spec(obj)
    problems = []
    for t in spec.get("templates") or []:
        name = t.get("name")
        if sum(k in t for k in _TEMPLATE_TYPES) > 1:
            problems.append(f"template {name!r}: template must have at most one template type")
        if t.get("timeout") and ("steps" in t or "dag" in t):
            problems.append(f"template {name!r}: timeout cannot be applied to steps or dag templates")
        if "activeDeadlineSeconds" in t and ("steps" in t or "dag" in t):
            problems.append(f"template {name!r}: activeDeadlineSeconds is only valid for leaf templates")
        if "resource" in t and "manifest" in t["resource"] and "manifestFrom" in t["resource"]:
            problems.append(f"template {name!r}: only one of manifest or manifestFrom can be specified")
        for task in _invocations(t):
            tn = task.get("name", "")
            if "depends" in task and "dependencies" in task:
                problems.append(f"template {name!r} task {tn!r}: cannot use both 'depends' and 'dependencies'")
            if "depends" in task and "continueOn" in task:
                problems.append(f"template {name!r} task {tn!r}: cannot use 'continueOn' when using 'depends'")
            if ("depends" in task or "dependencies" in task) and re.match(r"^[0-9]", tn):
                problems.append(f"template {name!r} task {tn!r}: task name cannot begin with a digit when using 'depends' or 'dependencies'")
            seq = task.get("withSequence") or {}
            if "count" in seq and "end" in seq:
                problems.append(f"template {name!r} task {tn!r}: only one of count or end can be defined")
    for metric in _all_metrics(spec):
        g = metric.get("gauge") or {}
        if g.get("realtime") and "resourcesDuration." in str(g.get("value", "")):
            problems.append(f"metric {metric.get('name')!r}: 'resourcesDuration.*' metrics cannot be used in real-time gauges")
    for art in _walk_key(spec, "artifacts"):
        for a in art if isinstance(art, list) else []:
            if sum(k in a for k in _ARTIFACT_LOCATIONS) > 1:
                problems.append(f"artifact {a.get('name')!r}: at most one artifact location can be specified")
    return problems


def _walk_key(node: Any, key: str) -> Iterator[Any]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _walk_key(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from _walk_key(v, key)


# ------------------------------------------------------------------------------------------ semantics

EXPR = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
# Global variables Argo substitutes anywhere (v4.1 docs, variables.md); workflow.parameters.* apart.
WORKFLOW_VARS = {"workflow.name", "workflow.namespace", "workflow.uid", "workflow.serviceAccountName",
                 "workflow.mainEntrypoint", "workflow.priority", "workflow.creationTimestamp", "workflow.duration",
                 "workflow.scheduledTime"}
# Argo sets these for every template, but they only mean something once the workflow has ended.
EXIT_ONLY_VARS = {"workflow.status", "workflow.failures"}
METRIC_VARS = {"status", "duration", "exitCode", "inputs.parameters", "retries"}
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


def _all_metrics(spec: dict) -> list[dict]:
    out = list((spec.get("metrics") or {}).get("prometheus") or [])
    for t in spec.get("templates") or []:
        out += list((t.get("metrics") or {}).get("prometheus") or [])
    return out


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


@functools.lru_cache(maxsize=1)
def cli_parser() -> argparse.ArgumentParser:
    """The real `lt-ssl` parser. `compare` and `submit` are registered here if lt_ssl/cli.py does not
    register them (yet): the check then still covers the commands the workflows run."""
    from .. import cli, compare
    from . import submit

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, module in (("compare", compare), ("submit", submit)):
        if name not in sub.choices:
            module.add_parser(sub)
    return parser


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
    """Parse `lt-ssl <args>` as `lt-ssl` itself does (`cli.parse_args`, which also takes overrides
    after options); (namespace, "") or (None, argparse's message)."""
    from .. import cli

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    real = getattr(cli, "parse_args", None)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            if real is not None and args and args[0] in sub.choices:
                return real(args), ""
            return cli_parser().parse_args(args), ""  # a command cli.py does not register (yet)
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
    """Checks no schema makes. `registry`: WorkflowTemplate name -> object, for templateRef."""
    registry = registry or {}
    spec = _spec(obj)
    problems: list[str] = []
    templates: dict[str, dict] = {}
    for t in spec.get("templates") or []:
        if t.get("name") in templates:
            problems.append(f"template {t.get('name')!r} is defined twice")
        templates[t.get("name")] = t
    global_params = _params(spec.get("arguments"))
    problems += _name_problems(obj, spec)
    for ref in ("entrypoint", "onExit"):
        if spec.get(ref) and spec[ref] not in templates:
            problems.append(f"spec.{ref} {spec[ref]!r} names no template")
    if obj.get("kind") != "WorkflowTemplate" and not spec.get("entrypoint") and not spec.get("workflowTemplateRef"):
        problems.append("spec.entrypoint is missing")

    # Templates the exit handler reaches may read workflow.status and workflow.failures.
    exit_reach: set[str] = set()
    stack = [spec["onExit"]] if spec.get("onExit") else []
    while stack:
        name = stack.pop()
        if name in exit_reach or name not in templates:
            continue
        exit_reach.add(name)
        stack += [i.get("template") for i in _invocations(templates[name]) if i.get("template")]

    def resolve(inv: dict, where: str) -> dict | None:
        if "template" in inv:
            callee = templates.get(inv["template"])
            if callee is None:
                problems.append(f"{where}: template {inv['template']!r} does not exist")
            return callee
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
        if "inline" not in inv:
            problems.append(f"{where}: names no template")
        return inv.get("inline")

    def check_var(var: str, where: str, *, inputs: dict, outputs: dict | None, item: bool, tasks: dict | None,
                  template: str | None, in_metric: bool = False) -> None:
        if var.startswith("="):
            return  # an expression template: checked by Argo at run time
        parts = var.split(".")
        if var.startswith("workflow.parameters."):
            if parts[2] not in global_params:
                problems.append(f"{where}: {{{{{var}}}}} is not declared in spec.arguments")
        elif var in EXIT_ONLY_VARS:
            if template is not None and template not in exit_reach:
                problems.append(f"{where}: {{{{{var}}}}} is only set in the onExit handler")
        elif var in WORKFLOW_VARS or var.startswith(("workflow.labels.", "workflow.annotations.", "workflow.creationTimestamp.")):
            pass
        elif var.startswith("inputs.parameters."):
            if parts[2] not in inputs:
                problems.append(f"{where}: {{{{{var}}}}} is not declared in the template's inputs")
        elif var.startswith("outputs.parameters."):
            if outputs is None or parts[2] not in outputs:
                problems.append(f"{where}: {{{{{var}}}}} is not an output parameter of the template")
        elif var == "item" or var.startswith("item."):
            if not item:
                problems.append(f"{where}: {{{{{var}}}}} outside a withItems/withParam task")
        elif var.startswith(("tasks.", "steps.")):
            if tasks is None or parts[1] not in tasks:
                problems.append(f"{where}: {{{{{var}}}}} names no {parts[0][:-1]} of this template")
            elif len(parts) == 5 and parts[2:4] == ["outputs", "parameters"]:
                callee = tasks[parts[1]]
                if callee is not None and parts[4] not in _params(callee.get("outputs")):
                    problems.append(f"{where}: {{{{{var}}}}}: that template has no output parameter {parts[4]!r}")
        elif in_metric and (var in METRIC_VARS or var.startswith("resourcesDuration.")):
            pass
        elif var in ("pod.name", "retries", "node.name"):
            pass
        else:
            problems.append(f"{where}: unknown variable {{{{{var}}}}}")

    # Workflow-level strings outside templates: arguments and metrics.
    for var in expressions(spec.get("arguments")):
        check_var(var, "spec.arguments", inputs={}, outputs=None, item=False, tasks=None, template=None)
    for var in expressions(spec.get("metrics")):
        check_var(var, "spec.metrics", inputs={}, outputs=None, item=False, tasks=None, template=None, in_metric=True)

    metric_shapes: dict[str, tuple] = {}
    for name, t in templates.items():
        where = f"template {name!r}"
        inputs, outputs = _params(t.get("inputs")), _params(t.get("outputs"))
        kw = dict(inputs=inputs, template=name)
        invocations = _invocations(t)
        for field, value in t.items():
            if field in ("dag", "steps", "metrics", "outputs"):
                continue
            for var in expressions(value):
                check_var(var, f"{where}.{field}", outputs=None, item=False, tasks=None, **kw)
        for p in outputs.values():  # valueFrom may read inputs
            for var in expressions(p):
                check_var(var, f"{where}.outputs", outputs=None, item=False, tasks=None, **kw)
        for metric in (t.get("metrics") or {}).get("prometheus") or []:
            for var in expressions(metric):
                check_var(var, f"{where} metric {metric.get('name')!r}", outputs=outputs, item=False, tasks=None,
                          in_metric=True, **kw)

        # DAG tasks and steps: references, dependencies, arguments against the callee's inputs.
        by_name: dict[str, dict | None] = {}
        for inv in invocations:
            iw = f"{where} {'task' if 'dag' in t else 'step'} {inv.get('name')!r}"
            if inv.get("name") in by_name:
                problems.append(f"{iw}: defined twice")
            by_name[inv.get("name")] = resolve(inv, iw)
        deps = {inv.get("name"): depends_names(inv.get("depends", "")) + list(inv.get("dependencies") or [])
                for inv in invocations}
        for task, ds in deps.items():
            for d in ds:
                if d not in by_name:
                    problems.append(f"{where} task {task!r}: depends on {d!r}, which is not a task here")
        ancestors = _ancestors(deps)
        if "dag" in t and any(task in anc for task, anc in ancestors.items()):
            problems.append(f"{where}: the task dependencies form a cycle")
        for inv in invocations:
            iw = f"{where} {'task' if 'dag' in t else 'step'} {inv.get('name')!r}"
            callee = by_name.get(inv.get("name"))
            looped = any(k in inv for k in ("withItems", "withParam", "withSequence"))
            visible = {k: v for k, v in by_name.items() if "dag" not in t or k in ancestors.get(inv.get("name"), set())}
            for var in expressions(inv):
                if var.startswith("tasks.") and var.split(".")[1] in by_name and var.split(".")[1] not in visible:
                    problems.append(f"{iw}: {{{{{var}}}}} reads a task it does not depend on")
                    continue
                check_var(var, iw, outputs=None, item=looped, tasks=by_name, **kw)
            if callee is not None:
                given = _params(inv.get("arguments"))
                wanted = _params(callee.get("inputs"))
                for arg in given:
                    if arg not in wanted:
                        problems.append(f"{iw}: passes {arg!r}, which {callee.get('name')!r} does not take")
                for p, decl in wanted.items():
                    if p not in given and "value" not in decl and "default" not in decl:
                        problems.append(f"{iw}: does not pass {p!r}, which {callee.get('name')!r} needs")

        # Metrics: Prometheus-valid names, one label set and help per name.
        for metric in (t.get("metrics") or {}).get("prometheus") or []:
            problems += _metric_problems(metric, where, metric_shapes)

        # `lt-ssl` containers: args parse with the real CLI; retries spare exit codes 2 and 3.
        c = t.get("container") or {}
        if c.get("command") == ["lt-ssl"]:
            gvalues = {f"workflow.parameters.{k}": substitute(str(p.get("value", "x")), {"workflow.name": "wf-abc12"})
                       for k, p in global_params.items()}
            options = {k: PLAUSIBLE.get(k, ["x"]) for k in inputs}
            for i in range(max((len(v) for v in options.values()), default=1)):
                values = gvalues | {f"inputs.parameters.{k}": v[min(i, len(v) - 1)] for k, v in options.items()}
                args = [substitute(a, values, default="x") for a in c.get("args") or []]
                ns, err = parse_cli(args)
                if ns is None:
                    problems.append(f"{where}: `lt-ssl {shlex.join(args)}` does not parse: {err}")
            expr = (t.get("retryStrategy") or {}).get("expression")
            if not expr:
                problems.append(f"{where}: an lt-ssl step needs a retryStrategy with an expression sparing exit codes 2 and 3")
            else:
                try:
                    from ..errors import EXIT_BAD_INPUT, EXIT_COLLAPSE, EXIT_PREEMPTED, EXIT_STORAGE, EXIT_UNEXPECTED

                    for code in (EXIT_BAD_INPUT, EXIT_COLLAPSE):
                        if retried(expr, code):
                            problems.append(f"{where}: retryStrategy retries exit code {code}, which no retry can fix")
                    for code in (EXIT_UNEXPECTED, EXIT_STORAGE, EXIT_PREEMPTED):
                        if not retried(expr, code):
                            problems.append(f"{where}: retryStrategy does not retry exit code {code}")
                except ValueError as e:
                    problems.append(f"{where}: {e}")

    for metric in (spec.get("metrics") or {}).get("prometheus") or []:
        problems += _metric_problems(metric, "spec", metric_shapes)
    problems += _fan_out_problems(templates)
    return problems


def _name_problems(obj: dict, spec: dict) -> list[str]:
    problems = []
    meta = obj.get("metadata") or {}
    limit = 52 if obj.get("kind") == "CronWorkflow" else 63  # a CronWorkflow's runs append "-<unix time>"
    name = meta.get("name") or meta.get("generateName", "") + "xxxxx"
    if len(name) > limit:
        problems.append(f"metadata name {name!r} is longer than {limit} characters")
    if obj.get("kind") == "CronWorkflow":
        for sched in (obj.get("spec") or {}).get("schedules") or []:
            if len(sched.split()) != 5 and not sched.startswith("@"):
                problems.append(f"cron schedule {sched!r} needs 5 fields (minute hour day month weekday)")
    for t in spec.get("templates") or []:
        if not FIELD_NAME.match(str(t.get("name", ""))):
            problems.append(f"template name {t.get('name')!r}: letters, digits and '-', starting with a letter or digit")
        for inv in _invocations(t):
            if not FIELD_NAME.match(str(inv.get("name", ""))):
                problems.append(f"template {t.get('name')!r}: task/step name {inv.get('name')!r} is not a valid Argo name")
            if sum(k in inv for k in ("withItems", "withParam", "withSequence")) > 1:
                problems.append(f"template {t.get('name')!r} task {inv.get('name')!r}: only one of withItems, withParam, withSequence")
        for section in ("inputs", "outputs"):
            for p in ((t.get(section) or {}).get("parameters") or []):
                if not PARAM_NAME.match(str(p.get("name", ""))):
                    problems.append(f"template {t.get('name')!r}: parameter name {p.get('name')!r} must be letters, digits, '_' or '-'")
    for p in (spec.get("arguments") or {}).get("parameters") or []:
        if not PARAM_NAME.match(str(p.get("name", ""))):
            problems.append(f"spec.arguments: parameter name {p.get('name')!r} must be letters, digits, '_' or '-'")
        if "value" not in p and "valueFrom" not in p:
            problems.append(f"spec.arguments: parameter {p.get('name')!r} needs a value (a default) or valueFrom")
    return problems


def _ancestors(deps: dict[str, list[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for task in deps:
        seen: set[str] = set()
        stack = list(deps[task])
        while stack:
            d = stack.pop()
            if d in seen:
                continue
            seen.add(d)
            stack += deps.get(d, [])
        out[task] = seen
    return out


def _metric_problems(metric: dict, where: str, shapes: dict[str, tuple]) -> list[str]:
    name = metric.get("name", "")
    problems = []
    if not METRIC_NAME.match(name):
        problems.append(f"{where}: metric name {name!r} must be letters, digits and _ only")
    elif not name.startswith("lt_ssl_"):
        problems.append(f"{where}: metric {name!r} must start with lt_ssl_")
    gauge = metric.get("gauge")
    if gauge is not None and "realtime" not in gauge:
        problems.append(f"{where}: gauge {name!r} needs realtime: true|false")
    labels = metric.get("labels") or []
    for label in labels:
        if not str(label.get("value", "")).strip():
            problems.append(f"{where}: metric {name!r} label {label.get('key')!r} has an empty value")
    kind = next((k for k in ("gauge", "counter", "histogram") if k in metric), None)
    shape = (kind, tuple(sorted(label.get("key") for label in labels)), metric.get("help"))
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


def main(argv: list[str] | None = None) -> int:
    """`python -m lt_ssl.pipeline.validate FILE...`: print every problem, exit 1 if any."""
    paths = argv if argv is not None else sys.argv[1:]
    objs = {p: load_objects(p) for p in paths}
    registry = registry_of([o for docs in objs.values() for o in docs])
    bad = 0
    for p, docs in objs.items():
        for o in docs:
            for msg in problems(copy.deepcopy(o), registry):
                print(f"{p}: {msg}")
                bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
