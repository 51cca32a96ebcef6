"""Submit the quickstart workflow to a real cluster and wait for Succeeded (`pytest -m on_cluster`).

Needs a kube context whose cluster answers, the Argo CRDs, the lt-ssl namespace with its
ServiceAccount, ConfigMap and Secret (k8s/ overlays), and the image loaded into the cluster
(LT_SSL_IMAGE, default lt-ssl:cpu). Skips, quickly, when any of that is missing.
"""

from __future__ import annotations

import os
import time

import pytest

from lt_ssl.pipeline import submit

from .conftest import WORKFLOWS

pytestmark = pytest.mark.on_cluster
NAMESPACE = os.environ.get("LT_SSL_NAMESPACE", submit.DEFAULT_NAMESPACE)
TIMEOUT_S = float(os.environ.get("LT_SSL_ON_CLUSTER_TIMEOUT", "1800"))


@pytest.fixture(scope="module")
def api():
    try:
        from kubernetes import client, config

        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
        else:
            config.load_kube_config()
    except Exception as e:  # noqa: BLE001 - any failure to load a config means: no cluster here
        pytest.skip(f"no kube config: {str(e).splitlines()[0][:120]}")
    try:
        client.VersionApi().get_code(_request_timeout=3)
        client.ApiextensionsV1Api().read_custom_resource_definition("workflows.argoproj.io", _request_timeout=3)
        client.CoreV1Api().read_namespace(NAMESPACE, _request_timeout=3)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no cluster with Argo and namespace {NAMESPACE} reachable: {type(e).__name__}: {str(e)[:120]}")
    return client.CustomObjectsApi()


def test_quickstart_workflow_succeeds(api):
    params = {"config": "/app/configs/quickstart.yaml", "gpus": os.environ.get("LT_SSL_GPUS", "0"),
              "image": os.environ.get("LT_SSL_IMAGE", "lt-ssl:cpu")}
    body = submit.build_submission(WORKFLOWS / "cluster_distill.yaml", params)
    name = submit.create(body, NAMESPACE, api)["metadata"]["name"]
    started = time.monotonic()
    code = submit.watch(name, NAMESPACE, api, interval=5, timeout=TIMEOUT_S)
    wf = api.get_namespaced_custom_object("argoproj.io", "v1alpha1", NAMESPACE, "workflows", name)
    status = wf.get("status") or {}
    assert code == 0, f"{name} ended {status.get('phase')}: {status.get('message')} after {time.monotonic() - started:.0f}s"
    evaluate = [n for n in (status.get("nodes") or {}).values() if n.get("templateName") == "evaluate"]
    outputs = {p["name"]: float(p["value"]) for p in evaluate[0]["outputs"]["parameters"]}
    assert all(0.0 <= v <= 1.0 for v in outputs.values()), outputs
