"""`lt-ssl submit WORKFLOW_YAML [-p key=value ...]`: create an Argo object through the Kubernetes API.

No `argo` binary needed: the YAML is loaded, its parameters set, validated offline (the same checks
as tests/workflows), and created as a custom object (argoproj.io/v1alpha1). `--watch` then polls
`status.phase` of a Workflow until it ends; `--dry-run` prints the object instead of sending it.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ..errors import EXIT_UNAVAILABLE, LtSslError
from . import validate

GROUP, VERSION = "argoproj.io", "v1alpha1"
PLURALS = {"Workflow": "workflows", "WorkflowTemplate": "workflowtemplates", "CronWorkflow": "cronworkflows"}
DEFAULT_NAMESPACE = "lt-ssl"
DONE = {"Succeeded": 0, "Failed": 1, "Error": 1}


class SubmitError(LtSslError):
    """The object or its parameters are wrong (exit 2), or the API refused it."""


class ClusterUnreachable(LtSslError):
    """No kube config, or the API server does not answer."""

    exit_code = EXIT_UNAVAILABLE


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("submit", help="submit an Argo workflow (workflows/*.yaml) to the cluster")
    p.add_argument("workflow", metavar="WORKFLOW_YAML", help="e.g. workflows/cluster_distill.yaml")
    p.add_argument("-p", "--parameter", action="append", default=[], metavar="KEY=VALUE",
                   help="set a workflow parameter (repeatable), e.g. -p config=/app/configs/cifar10_lt.yaml -p gpus=1")
    p.add_argument("-n", "--namespace", default=DEFAULT_NAMESPACE, help=f"namespace (default {DEFAULT_NAMESPACE})")
    p.add_argument("--watch", action="store_true", help="wait until the workflow ends; exit 0 only if it Succeeded")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between status polls with --watch")
    p.add_argument("--timeout", type=float, default=None, help="give up watching after this many seconds")
    p.add_argument("--dry-run", action="store_true", help="print the object that would be sent; send nothing")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks")
    p.set_defaults(func=main)
    return p


def parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SubmitError(f"parameter {item!r} is not key=value (e.g. -p gpus=1)")
        params[key.strip()] = value
    return params


def arguments_of(obj: dict) -> dict:
    spec = obj.setdefault("spec", {})
    if obj.get("kind") == "CronWorkflow":
        spec = spec.setdefault("workflowSpec", {})
    return spec.setdefault("arguments", {})


def apply_params(obj: dict, params: dict[str, str]) -> dict:
    """A copy of `obj` with its spec.arguments parameters set; an unknown name is an error."""
    obj = copy.deepcopy(obj)
    declared = {p["name"]: p for p in arguments_of(obj).get("parameters") or []}
    for key, value in params.items():
        if key not in declared:
            raise SubmitError(f"unknown parameter {key!r}; this workflow takes: {', '.join(declared) or 'none'}")
        declared[key]["value"] = value
        declared[key].pop("valueFrom", None)
        enum = declared[key].get("enum")
        if enum and value not in enum:
            raise SubmitError(f"parameter {key}={value!r} is not one of {', '.join(enum)}")
    return obj


def build_submission(path: str | Path, params: dict[str, str] | None = None) -> dict:
    """The object `submit` sends: the YAML's single Argo object, parameters applied, validated."""
    docs = validate.load_objects(path)
    if len(docs) != 1:
        raise SubmitError(f"{path} holds {len(docs)} YAML documents; submit takes a file with exactly one")
    obj = docs[0]
    if obj.get("kind") not in PLURALS:
        raise SubmitError(f"{path} holds a {obj.get('kind')!r}; submit creates {', '.join(PLURALS)}")
    obj = apply_params(obj, params or {})
    obj.get("metadata", {}).pop("namespace", None)  # the namespace is --namespace's
    validate.check(obj, validate.registry_of(_sibling_templates(Path(path))), source=str(path))
    return obj


def _sibling_templates(path: Path) -> list[dict]:
    """WorkflowTemplates beside the file, so templateRefs to them resolve in the offline check."""
    out = []
    for other in sorted(path.resolve().parent.glob("*.yaml")):
        try:
            out += [d for d in validate.load_objects(other) if d.get("kind") == "WorkflowTemplate"]
        except LtSslError:
            continue
    return out


# ------------------------------------------------------------------------------------------- cluster


def custom_objects_api():
    """A CustomObjectsApi for the current kube context, or the in-cluster service account."""
    import os

    try:
        from kubernetes import client, config
    except ImportError:
        raise LtSslError("`lt-ssl submit` needs the argo extra: pip install 'lt-ssl[argo]'") from None
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
        else:
            config.load_kube_config()
    except (config.ConfigException, OSError) as e:
        raise ClusterUnreachable(f"no Kubernetes config ({str(e).splitlines()[0]}); set KUBECONFIG or run in the cluster") from None
    return client.CustomObjectsApi()


def _api_call(what: str, fn, *args, **kwargs):
    """Run one API call, turning transport and API failures into one-line LtSslErrors."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    try:
        return fn(*args, _request_timeout=(5, 30), **kwargs)
    except ApiException as e:
        reason = _api_message(e)
        if e.status == 404:
            raise SubmitError(f"{what}: not found ({reason}); are the Argo CRDs installed and does the namespace exist?") from None
        if e.status in (401, 403):
            raise SubmitError(f"{what}: not allowed ({reason}); check your kube context's RBAC") from None
        if e.status == 0 or e.status is None:
            raise ClusterUnreachable(f"{what}: the Kubernetes API is unreachable ({reason})") from None
        raise SubmitError(f"{what}: the API server refused it ({e.status}: {reason})") from None
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise ClusterUnreachable(f"{what}: the Kubernetes API is unreachable ({type(e).__name__}: {str(e)[:200]})") from None


def _api_message(e) -> str:
    import json

    try:
        return json.loads(e.body).get("message") or e.reason
    except (TypeError, ValueError, AttributeError):
        return str(e.reason)


def create(body: dict, namespace: str, api) -> dict:
    """Create the object; returns what the API server answered (with the generated name)."""
    plural = PLURALS[body["kind"]]
    return _api_call(f"create {body['kind']}", api.create_namespaced_custom_object, GROUP, VERSION, namespace, plural, body)


def watch(name: str, namespace: str, api, *, interval: float = 10.0, timeout: float | None = None,
          sleep=time.sleep, clock=time.monotonic) -> int:
    """Poll a Workflow's status.phase until it ends: 0 if Succeeded, 1 if Failed or Error."""
    start, last = clock(), None
    while True:
        wf = _api_call(f"get workflow {name}", api.get_namespaced_custom_object, GROUP, VERSION, namespace, "workflows", name)
        status = wf.get("status") or {}
        phase = status.get("phase") or "Pending"
        if phase != last:
            print(f"{name}: {phase}" + (f" ({status['message']})" if status.get("message") else ""), file=sys.stderr)
            last = phase
        if phase in DONE:
            return DONE[phase]
        if timeout is not None and clock() - start > timeout:
            raise SubmitError(f"{name} still {phase} after {timeout:g}s; it keeps running (argo watch {name} -n {namespace})")
        sleep(interval)


def main(args: argparse.Namespace, api=None) -> int:
    body = build_submission(args.workflow, parse_params(args.parameter))
    if args.dry_run:
        print(yaml.safe_dump(body, sort_keys=False), end="")
        return 0
    if args.watch and body["kind"] != "Workflow":
        raise SubmitError(f"--watch follows a Workflow; {args.workflow} holds a {body['kind']}")
    api = api if api is not None else custom_objects_api()
    created = create(body, args.namespace, api)
    name = created["metadata"]["name"]
    print(name)
    if args.watch:
        return watch(name, args.namespace, api, interval=args.interval, timeout=args.timeout)
    return 0
