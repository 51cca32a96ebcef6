"""k8s/: every overlay builds with `kubectl kustomize`, validates strictly, and is locked down."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K8S = os.path.join(REPO, "k8s")
TARGETS = ["base", "overlays/kind", "overlays/minikube", "overlays/gpu"]
LOCAL_OVERLAYS = ["overlays/kind", "overlays/minikube", "overlays/gpu"]
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")


def versions() -> dict[str, str]:
    out = {}
    with open(os.path.join(REPO, "infra", "versions.env")) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                out[key] = value
    return out


K8S_VERSION = re.match(r"v(\d+\.\d+)", versions()["MINIKUBE_KUBERNETES_VERSION"]).group(1)

_built: dict[str, list[dict]] = {}


def build(target: str) -> list[dict]:
    if target not in _built:
        out = subprocess.run(
            ["kubectl", "kustomize", os.path.join(K8S, target)],
            capture_output=True, text=True, timeout=120,
        )
        assert out.returncode == 0, f"kubectl kustomize {target} failed:\n{out.stderr}"
        _built[target] = [d for d in yaml.safe_load_all(out.stdout) if d]
    return _built[target]


def find(docs: list[dict], kind: str, name: str) -> dict:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def pod_specs(docs: list[dict]):
    for d in docs:
        if d["kind"] not in WORKLOAD_KINDS:
            continue
        spec = d["spec"]
        if d["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if d["kind"] != "Pod":
            spec = spec["template"]["spec"]
        yield f'{d["kind"]}/{d["metadata"]["name"]}', spec


def containers(spec: dict):
    return spec.get("initContainers", []) + spec.get("containers", [])


@pytest.mark.parametrize("target", TARGETS)
def test_builds_with_shared_names(target):
    docs = build(target)
    assert all(d["metadata"].get("namespace", "lt-ssl") == "lt-ssl" for d in docs if d["kind"] != "Namespace")
    find(docs, "Namespace", "lt-ssl")
    find(docs, "ServiceAccount", "lt-ssl-workflow")
    binding = find(docs, "RoleBinding", "lt-ssl-workflow")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lt-ssl-workflow"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "lt-ssl-workflow", "namespace": "lt-ssl"}]
    env = find(docs, "ConfigMap", "lt-ssl-env")["data"]
    assert env == {
        "AWS_ENDPOINT_URL": "http://minio.lt-ssl.svc:9000",
        "AWS_DEFAULT_REGION": "us-east-1",
        "PUSHGATEWAY_URL": "http://pushgateway.lt-ssl.svc:9091",
        "LT_SSL_DATA_CACHE": "/cache",
    }
    for name, port in [("pushgateway", 9091), ("prometheus", 9090)]:
        assert [p["port"] for p in find(docs, "Service", name)["spec"]["ports"]] == [port]
    dashboard = find(docs, "ConfigMap", "lt-ssl-grafana-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["lt-ssl-dashboard.json"])["title"].startswith("lt-ssl")


@pytest.mark.parametrize("target", TARGETS)
def test_workflow_role_is_least_privilege(target):
    role = find(build(target), "Role", "lt-ssl-workflow")
    assert role["rules"] == [
        {"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"], "verbs": ["create", "patch"]}
    ]
    assert not [d for d in build(target) if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]


@pytest.mark.parametrize("target", TARGETS)
def test_artifact_repository_points_at_minio(target):
    cm = find(build(target), "ConfigMap", "artifact-repositories")
    assert cm["metadata"]["annotations"]["workflows.argoproj.io/default-artifact-repository"] == "default-v1"
    s3 = yaml.safe_load(cm["data"]["default-v1"])["s3"]
    assert s3["bucket"] == "lt-ssl"
    assert s3["endpoint"] == "minio.lt-ssl.svc:9000"
    assert s3["keyFormat"].startswith("runs/{{workflow.name}}/")
    assert s3["accessKeySecret"] == {"name": "lt-ssl-s3", "key": "AWS_ACCESS_KEY_ID"}
    assert s3["secretKeySecret"] == {"name": "lt-ssl-s3", "key": "AWS_SECRET_ACCESS_KEY"}


@pytest.mark.parametrize("target", TARGETS)
def test_every_object_validates_strictly(target):
    import kubernetes_validate

    for doc in build(target):
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f'{doc["kind"]}/{doc["metadata"]["name"]} in {target}: {e.message} at {list(e.path)}')


def test_strict_validation_rejects_a_misspelt_field():
    """The control for the test above: strict mode must catch what Kubernetes would reject."""
    import copy

    import kubernetes_validate

    doc = copy.deepcopy(find(build("overlays/kind"), "Deployment", "minio"))
    doc["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonRot"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_is_locked_down(target):
    found = 0
    for where, spec in pod_specs(build(target)):
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, where
        assert pod.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        assert spec.get("automountServiceAccountToken") is False, f"{where}: no pod here talks to the API"
        for c in containers(spec):
            found += 1
            sc = c.get("securityContext", {})
            what = f'{where} container {c["name"]}'
            assert sc.get("runAsNonRoot") is True, what
            assert sc.get("allowPrivilegeEscalation") is False, what
            assert sc.get("readOnlyRootFilesystem") is True, what
            assert sc.get("capabilities") == {"drop": ["ALL"]}, what
            assert sc.get("seccompProfile") == {"type": "RuntimeDefault"}, what
            assert "memory" in c.get("resources", {}).get("limits", {}), f"{what}: no memory limit"
    assert found >= (2 if target == "base" else 4)


@pytest.mark.parametrize("target", TARGETS)
def test_images_are_pinned(target):
    for where, spec in pod_specs(build(target)):
        for c in containers(spec):
            image = c["image"]
            name, _, tag = image.rpartition(":") if "@" not in image else (image, "", "digest")
            assert name and tag, f"{where}: {image} has no tag"
            assert tag != "latest", f"{where}: {image}"
            assert c.get("imagePullPolicy") in ("IfNotPresent", "Never"), f"{where}: {image}"


def test_manifest_pins_match_versions_env():
    pins = versions()
    images = {c["image"] for _, spec in pod_specs(build("overlays/kind")) for c in containers(spec)}
    for key in ("MINIO_IMAGE", "PUSHGATEWAY_IMAGE", "PROMETHEUS_IMAGE"):
        assert pins[key] in images, f"{key}={pins[key]} in infra/versions.env but not in k8s/"
    assert re.fullmatch(r"kindest/node:v1\.32\.\d+@sha256:[0-9a-f]{64}", pins["KIND_NODE_IMAGE"])
    assert re.fullmatch(r"v4\.1\.\d+", pins["ARGO_VERSION"])
    assert pins["MINIKUBE_KUBERNETES_VERSION"] == pins["KIND_NODE_IMAGE"].split(":")[1].split("@")[0]


def test_prometheus_scrapes_pushgateway_and_argo():
    cm = find(build("base"), "ConfigMap", "prometheus")
    config = yaml.safe_load(cm["data"]["prometheus.yml"])
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["pushgateway"]["honor_labels"] is True
    assert jobs["pushgateway"]["static_configs"][0]["targets"] == ["pushgateway.lt-ssl.svc:9091"]
    assert jobs["argo-workflow-controller"]["static_configs"][0]["targets"] == [
        "workflow-controller-metrics.argo.svc:9090"
    ]
    if shutil.which("promtool"):
        out = subprocess.run(
            ["promtool", "check", "config", "/dev/stdin"],
            input=cm["data"]["prometheus.yml"], capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("target", ["overlays/kind", "overlays/minikube"])
def test_cpu_overlays_use_the_cpu_image_and_no_gpu(target):
    docs = build(target)
    assert "nvidia.com/gpu" not in yaml.safe_dump_all(docs)
    job = find(docs, "Job", "minio-create-bucket")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "lt-ssl:cpu"


def test_gpu_overlay_requests_gpus_with_the_cuda_image():
    docs = build("overlays/gpu")
    spec = find(docs, "Job", "gpu-check")["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["image"] == "lt-ssl:cuda"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["nodeSelector"] == {"lt-ssl.dev/gpu": "true"}
    assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in spec["volumes"])
    lt_ssl_images = {
        c["image"] for _, s in pod_specs(docs) for c in containers(s) if c["image"].startswith("lt-ssl:")
    }
    assert lt_ssl_images == {"lt-ssl:cuda"}


def test_credentials_only_in_dev_overlays():
    assert not [d for d in build("base") if d["kind"] == "Secret"], "base must hold no credentials"
    for target in LOCAL_OVERLAYS:
        secret = find(build(target), "Secret", "lt-ssl-s3")
        assert secret["metadata"]["labels"]["lt-ssl.dev/dev-only"] == "true"
        assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert [p["port"] for p in find(build(target), "Service", "minio")["spec"]["ports"]][0] == 9000


def test_base_layout_is_component_slash_name_kind():
    for dirpath, _, files in os.walk(os.path.join(K8S, "base")):
        for f in files:
            if not f.endswith(".yaml") or f == "kustomization.yaml":
                continue
            component = os.path.basename(dirpath)
            with open(os.path.join(dirpath, f)) as fh:
                doc = yaml.safe_load(fh)
            expected = f'{doc["metadata"]["name"]}-{doc["kind"].lower()}.yaml'
            assert f == expected, f"{component}/{f} should be named {expected}"


def test_kind_cluster_config():
    with open(os.path.join(REPO, "infra", "kind", "cluster.yaml")) as f:
        config = yaml.safe_load(f)
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert config["name"] == versions()["KIND_CLUSTER_NAME"]
    assert [n["role"] for n in config["nodes"]][0] == "control-plane"
