"""`lt-ssl submit`: the body it builds, the parameters it takes, the API calls it makes (a fake API)."""

from __future__ import annotations

import argparse

import pytest
import yaml

from lt_ssl.cli import build_parser
from lt_ssl.pipeline import submit, validate

from .conftest import WORKFLOWS, spec_of

CLUSTER_DISTILL = WORKFLOWS / "cluster_distill.yaml"
pytestmark = pytest.mark.usefixtures("schemas")


def params_of(o: dict) -> dict[str, str]:
    return {p["name"]: p["value"] for p in spec_of(o)["arguments"]["parameters"]}


def test_build_submission_applies_parameters_and_validates():
    body = submit.build_submission(CLUSTER_DISTILL, {"gpus": "1", "image": "lt-ssl:cuda", "overrides": "cluster.k=8"})
    p = params_of(body)
    assert p["gpus"] == "1" and p["image"] == "lt-ssl:cuda" and p["overrides"] == "cluster.k=8"
    assert p["config"] == "/app/configs/quickstart.yaml"  # untouched defaults stay
    assert validate.problems(body) == []


def test_build_submission_does_not_change_the_file():
    before = CLUSTER_DISTILL.read_text()
    submit.build_submission(CLUSTER_DISTILL, {"gpus": "2"})
    assert CLUSTER_DISTILL.read_text() == before


def test_unknown_parameter_is_named():
    with pytest.raises(submit.SubmitError, match=r"unknown parameter 'gpu'.*gpus"):
        submit.build_submission(CLUSTER_DISTILL, {"gpu": "1"})


def test_cron_parameters_live_in_the_workflow_spec():
    body = submit.build_submission(WORKFLOWS / "regression_cron.yaml", {"image": "registry.local/lt-ssl:cpu"})
    assert params_of(body)["image"] == "registry.local/lt-ssl:cpu"


@pytest.mark.parametrize("item", ["gpus", "=1", ""])
def test_malformed_parameter(item):
    with pytest.raises(submit.SubmitError, match="not key=value"):
        submit.parse_params([item])


def test_empty_value_is_a_value():
    assert submit.parse_params(["overrides=", "config=/a=b.yaml"]) == {"overrides": "", "config": "/a=b.yaml"}


def test_rejects_several_documents_and_other_kinds(tmp_path):
    two = tmp_path / "two.yaml"
    two.write_text(CLUSTER_DISTILL.read_text() + "\n---\n" + CLUSTER_DISTILL.read_text().split("---\n", 1)[1])
    with pytest.raises(submit.SubmitError, match="2 YAML documents"):
        submit.build_submission(two, {})
    pod = tmp_path / "pod.yaml"
    pod.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n")
    with pytest.raises(submit.SubmitError, match="'Pod'"):
        submit.build_submission(pod, {})


def test_invalid_object_is_refused_before_sending(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CLUSTER_DISTILL.read_text().replace("withParam:", "withParm:"))
    with pytest.raises(validate.WorkflowValidationError, match="withParm"):
        submit.build_submission(bad, {})


def cli(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def test_dry_run_through_the_cli_prints_the_body(capsys):
    args = cli(["submit", str(CLUSTER_DISTILL), "-p", "gpus=1", "--dry-run"])
    assert args.func(args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == submit.build_submission(CLUSTER_DISTILL, {"gpus": "1"})


class FakeApi:
    """Records create calls; answers gets from a list of phases."""

    def __init__(self, phases=("Running", "Succeeded"), fail: Exception | None = None):
        self.created: list[tuple] = []
        self.phases = list(phases)
        self.fail = fail

    def create_namespaced_custom_object(self, group, version, namespace, plural, body, **kw):
        if self.fail:
            raise self.fail
        self.created.append((group, version, namespace, plural, body))
        return {**body, "metadata": {**body["metadata"], "name": "cluster-distill-x7k2q"}}

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        assert (group, version, plural, name) == ("argoproj.io", "v1alpha1", "workflows", "cluster-distill-x7k2q")
        phase = self.phases.pop(0) if len(self.phases) > 1 else self.phases[0]
        return {"metadata": {"name": name}, "status": {"phase": phase, "message": "child failed" if phase == "Failed" else ""}}


def test_create_uses_the_argo_group_version_plural(capsys):
    api = FakeApi()
    args = cli(["submit", str(CLUSTER_DISTILL), "-n", "lt-ssl", "-p", "gpus=1"])
    assert submit.main(args, api=api) == 0
    (group, version, ns, plural, body), = api.created
    assert (group, version, ns, plural) == ("argoproj.io", "v1alpha1", "lt-ssl", "workflows")
    assert params_of(body)["gpus"] == "1"
    assert capsys.readouterr().out.strip() == "cluster-distill-x7k2q"


def test_cron_goes_to_cronworkflows():
    api = FakeApi()
    args = cli(["submit", str(WORKFLOWS / "regression_cron.yaml")])
    assert submit.main(args, api=api) == 0
    assert api.created[0][3] == "cronworkflows"


@pytest.mark.parametrize("phases,code", [(("Pending", "Running", "Succeeded"), 0), (("Running", "Failed"), 1),
                                         (("Error",), 1)])
def test_watch_polls_until_the_workflow_ends(phases, code):
    api = FakeApi(phases)
    sleeps = []
    assert submit.watch("cluster-distill-x7k2q", "lt-ssl", api, interval=7, sleep=sleeps.append) == code
    assert sleeps == [7] * (len(phases) - 1)


def test_watch_through_main(capsys):
    args = cli(["submit", str(CLUSTER_DISTILL), "--watch", "--interval", "0"])
    assert submit.main(args, api=FakeApi(("Running", "Failed"))) == 1
    assert "Failed (child failed)" in capsys.readouterr().err


def test_watch_timeout():
    ticks = iter(range(0, 1000, 10))
    with pytest.raises(submit.SubmitError, match="still Running after 25s"):
        submit.watch("cluster-distill-x7k2q", "lt-ssl", FakeApi(("Running",)), timeout=25, sleep=lambda s: None,
                     clock=lambda: next(ticks))


def test_unreachable_cluster_is_one_line():
    import urllib3

    api = FakeApi(fail=urllib3.exceptions.MaxRetryError(None, "/apis", "connection refused"))
    with pytest.raises(submit.ClusterUnreachable) as e:
        submit.create(submit.build_submission(CLUSTER_DISTILL), "lt-ssl", api)
    assert "\n" not in str(e.value) and "unreachable" in str(e.value)
    assert e.value.exit_code == submit.EXIT_UNAVAILABLE


def test_api_errors_are_one_line():
    from kubernetes.client.exceptions import ApiException

    err = ApiException(status=404, reason="Not Found")
    err.body = '{"message": "the server could not find the requested resource"}'
    with pytest.raises(submit.SubmitError, match="are the Argo CRDs installed"):
        submit.create(submit.build_submission(CLUSTER_DISTILL), "lt-ssl", FakeApi(fail=err))


def test_no_kube_config_is_unreachable(monkeypatch, tmp_path):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(submit.ClusterUnreachable, match="no Kubernetes config"):
        submit.custom_objects_api()


def test_watch_needs_a_workflow():
    args = cli(["submit", str(WORKFLOWS / "regression_cron.yaml"), "--watch"])
    with pytest.raises(submit.SubmitError, match="--watch follows a Workflow"):
        submit.main(args, api=FakeApi())
