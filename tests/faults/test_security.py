"""Security: safe loaders only, no credentials in what is committed, built or logged, and run URIs
and artifact keys that cannot leave their run.

Credential allow rule (decided here, checked below). Key-looking strings are
- AWS access key ids: `(AKIA|ASIA)[0-9A-Z]{16}`,
- secret-looking strings: 40 characters of the base64 alphabet [A-Za-z0-9/+] standing alone, with at
  least one upper-case letter, one lower-case letter and one digit (an AWS secret access key's
  shape; a 40-hex git commit id has no upper case and is not one),
- PEM private keys: `-----BEGIN ... PRIVATE KEY-----`.
None may appear in configs/, workflows/, images/ (text files; the gitignored wheelhouse under
images/context holds third-party wheels, which are binary and skipped), or the rendered
`kubectl kustomize k8s/overlays/<each>` output. Beyond patterns: a rendered `kind: Secret` that
carries data is allowed only when it is labelled `lt-ssl.dev/dev-only: "true"` and every value in it
is visibly fake (contains "dev") -- the dev-only MinIO credentials of k8s/components/minio-dev; any
other Secret with data fails (real credentials are created in the cluster from a secret store).
A credential-named environment variable (…SECRET…, …PASSWORD…, …TOKEN…, …ACCESS_KEY…) may only be
set from a Secret (valueFrom.secretKeyRef / envFrom.secretRef), never as a literal `value:` in a
manifest or workflow, and no ConfigMap or Dockerfile ENV/ARG may define one.
"""

from __future__ import annotations

import ast
import base64
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from lt_ssl.config import load_config
from lt_ssl.errors import ConfigError, RunUriError
from lt_ssl.pipeline import local
from lt_ssl.store import check_key, open_store
from tests.conftest import QUICKSTART, REPO, TINY

from .conftest import snapshot

ROOT = Path(REPO)

# ------------------------------------------------------------------------------------ safe loaders

# call -> (keyword, value) it must carry; None: never allowed
LOADERS = {
    "torch.load": ("weights_only", True),
    "numpy.load": ("allow_pickle", False),
    "pickle.load": None, "pickle.loads": None, "pickle.Unpickler": None, "_pickle.load": None, "_pickle.loads": None,
    "cPickle.load": None, "dill.load": None, "dill.loads": None, "joblib.load": None, "pandas.read_pickle": None,
    "marshal.load": None, "marshal.loads": None, "shelve.open": None, "yaml.unsafe_load": None, "yaml.full_load": None,
    "torch.jit.load": None,
}


def _calls(path: Path):
    """(dotted name of the callee with import aliases resolved, call node) for every call in a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    alias: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                alias[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                alias[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts, f = [], node.func
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            if isinstance(f, ast.Name):
                parts.append(alias.get(f.id, f.id))
                yield ".".join(reversed(parts)), node
    yield from ()


def _kw(node: ast.Call, name: str):
    for k in node.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<not a constant>"
    return "<missing>"


def test_every_loader_in_lt_ssl_is_a_safe_one():
    problems, safe = [], []
    for path in sorted((ROOT / "lt_ssl").rglob("*.py")):
        rel = path.relative_to(ROOT)
        for name, node in _calls(path):
            if name not in LOADERS:
                continue
            rule = LOADERS[name]
            where = f"{rel}:{node.lineno} {name}(...)"
            if rule is None:
                problems.append(f"{where}: unpickles without an allow-list")
            elif _kw(node, rule[0]) is not rule[1]:
                problems.append(f"{where} needs {rule[0]}={rule[1]}, has {_kw(node, rule[0])}")
            else:
                safe.append(where)
            if name == "yaml.load" and "SafeLoader" not in ast.dump(node):
                problems.append(f"{where}: yaml.load without SafeLoader")
        # plain text too, for calls the AST walk cannot name (getattr tricks, strings passed to eval)
        text = path.read_text()
        for m in re.finditer(r"\b(?:torch\.load|pickle\.loads?|np\.load|numpy\.load)\(", text):
            call = _balanced(text, m.end() - 1)
            if "pickle." in call or ("torch.load" in call and "weights_only=True" not in call) or \
                    ("load(" in call and "np" in call.split("(")[0] and "allow_pickle=False" not in call):
                problems.append(f"{rel}: {call!r}")
    assert problems == [], "\n".join(problems)
    assert any("torch.load" in s for s in safe) and any("numpy.load" in s for s in safe)  # the scan sees the real ones


def _balanced(text: str, open_at: int) -> str:
    """From text[open_at] == '(' to its matching ')'."""
    depth = 0
    for i in range(open_at, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[text.rfind("\n", 0, open_at) + 1: i + 1].strip()
    return text[open_at:]


def test_unpicklers_in_lt_ssl_are_restricted():
    """A pickle.Unpickler subclass must override find_class (an allow-list), as data/cifar.py's does."""
    found = []
    for path in sorted((ROOT / "lt_ssl").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any("Unpickler" in ast.unparse(b) for b in node.bases):
                methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
                assert "find_class" in methods, f"{path}: {node.name} does not restrict find_class"
                found.append(node.name)
    assert found == ["_CifarUnpickler"]


# ------------------------------------------------------------------------------------ credentials

AKIA = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
SECRET40 = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
PEM = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
CREDENTIAL_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|PRIVATE_KEY|API_KEY", re.I)


def key_looking(text: str) -> list[str]:
    hits = [m.group() for rx in (AKIA, PEM) for m in rx.finditer(text)]
    for m in SECRET40.finditer(text):
        s = m.group()
        if re.search(r"[A-Z]", s) and re.search(r"[a-z]", s) and re.search(r"[0-9]", s):
            hits.append(s)
    return hits


def test_the_scanner_catches_key_shaped_strings():
    # AWS's documented example credentials, and a PEM header
    sample = ("id: AKIAIOSFODNN7EXAMPLE\nsecret: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"
              "-----BEGIN RSA PRIVATE KEY-----\ncommit: 0123456789abcdef0123456789abcdef01234567\n")
    assert key_looking(sample) == ["AKIAIOSFODNN7EXAMPLE", "-----BEGIN RSA PRIVATE KEY-----",
                                   "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"]


def _text_files(folder: Path):
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.stat().st_size <= 1 << 20:
            with open(p, "rb") as f:
                if b"\0" in f.read(8192):
                    continue  # binary (wheels)
            yield p


@pytest.mark.parametrize("folder", ["configs", "workflows", "images"])
def test_no_credentials_in_committed_files(folder):
    problems = []
    scanned = 0
    for p in _text_files(ROOT / folder):
        scanned += 1
        text = p.read_text(errors="replace")
        problems += [f"{p.relative_to(ROOT)}: {h}" for h in key_looking(text)]
        if p.name.startswith("Dockerfile") or p.suffix == ".sh":
            for m in re.finditer(r"^\s*(?:ENV|ARG|export)\s+([A-Za-z_][A-Za-z0-9_]*)", text, re.M):
                if CREDENTIAL_NAME.search(m[1]):
                    problems.append(f"{p.relative_to(ROOT)}: defines credential variable {m[1]}")
        if p.suffix in (".yaml", ".yml"):
            for doc in yaml.safe_load_all(text):
                problems += [f"{p.relative_to(ROOT)}: {x}" for x in _manifest_problems(doc)]
    assert scanned > 0
    assert problems == [], "\n".join(problems)


def _manifest_problems(doc) -> list[str]:
    """Secrets, literal credential env values and credential-named ConfigMap keys in one YAML document."""
    problems = []
    if not isinstance(doc, dict):
        return problems
    kind = doc.get("kind")
    if kind == "Secret" and (doc.get("data") or doc.get("stringData")):
        labels = (doc.get("metadata") or {}).get("labels") or {}
        values = {**{k: base64.b64decode(v).decode(errors="replace") for k, v in (doc.get("data") or {}).items()},
                  **{k: str(v) for k, v in (doc.get("stringData") or {}).items()}}
        name = (doc.get("metadata") or {}).get("name")
        if labels.get("lt-ssl.dev/dev-only") != "true":
            problems.append(f"Secret {name} holds data but is not labelled lt-ssl.dev/dev-only: \"true\"")
        for k, v in values.items():
            if "dev" not in v or key_looking(v):
                problems.append(f"Secret {name}: {k} does not look like a dev-only placeholder")
    if kind == "ConfigMap":
        for k in (doc.get("data") or {}):
            if CREDENTIAL_NAME.search(k):
                problems.append(f"ConfigMap {(doc.get('metadata') or {}).get('name')} defines {k}")
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("name"), str) and "value" in node and CREDENTIAL_NAME.search(node["name"]) \
                    and isinstance(node["value"], str) and node["value"] and "{{" not in node["value"]:
                problems.append(f"env {node['name']} is set to a literal value instead of a secretKeyRef")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return problems


def _overlays() -> list[Path]:
    return sorted(p for p in (ROOT / "k8s" / "overlays").iterdir() if (p / "kustomization.yaml").exists())


@pytest.mark.parametrize("overlay", [p.name for p in _overlays()])
def test_no_credentials_in_rendered_manifests_except_the_marked_dev_secret(overlay):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl not installed: cannot render the kustomize overlays")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "k8s" / "overlays" / overlay)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    problems = [f"pattern: {h}" for h in key_looking(out.stdout)]
    docs = list(yaml.safe_load_all(out.stdout))
    for doc in docs:
        problems += _manifest_problems(doc)
    assert problems == [], "\n".join(problems)
    dev = [d for d in docs if isinstance(d, dict) and d.get("kind") == "Secret" and (d.get("data") or d.get("stringData"))]
    assert all(d["metadata"]["labels"]["lt-ssl.dev/dev-only"] == "true" for d in dev)


def test_stage_logs_and_artifacts_never_show_the_secret_key(forked, s3_bucket, tmp_path):
    import boto3
    from moto.core.authorization import enable_iam_authentication

    secret = "FaultSuite/Secret+" + uuid.uuid4().hex[:22]  # 40 characters, known to this test only
    run_uri = s3_bucket.uri(f"runs/secret-{uuid.uuid4().hex[:8]}")
    env = {"AWS_SECRET_ACCESS_KEY": secret}
    logs = []
    for argv in (["stage", "prepare", "--run", run_uri, "--config", QUICKSTART, *TINY, "--debug"],
                 ["stage", "pretrain", "--run", run_uri, "--debug"]):
        rc, log = forked.run(argv, env=env)
        assert rc == 0, log
        logs.append(log)
    # a refused secret, with --debug so the traceback is printed too
    iam = boto3.session.Session().client("iam", endpoint_url=s3_bucket.endpoint, region_name="us-east-1")
    user = f"u-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    with enable_iam_authentication():
        for debug in ([], ["--debug"]):
            rc, log = forked.run(["stage", "pretrain", "--run", run_uri, *debug],
                                 env={"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": secret})
            assert rc == 2 and "refused the credentials" in log, log  # a user error: never retried
            assert ("Traceback" in log) == bool(debug)
            logs.append(log)
    for log in logs:
        assert secret not in log and secret.split("/")[1] not in log
    store = open_store(run_uri)
    for k in store.list():
        data = store.read_bytes(k)
        assert secret.encode() not in data and secret.split("/")[1].encode() not in data, k


# ------------------------------------------------------------------------------------ run URIs and keys

BAD_KEYS = ["../x", "a/../../x", "/etc/passwd", "", "a//b", "./a", "a/./b", "a/..", "..", "a\\..\\b", "a\x00b",
            "~/x", "a/b c", "pretrain/../../../outside.txt"]


def test_artifact_keys_cannot_leave_the_run(tmp_path):
    store = open_store((tmp_path / "runs" / "r").as_uri())
    store.write_text("inside.txt", "ok")
    (tmp_path / "file.bin").write_bytes(b"x")
    before = snapshot(tmp_path)
    for key in BAD_KEYS:
        for op in (lambda: store.write_bytes(key, b"x"), lambda: store.read_bytes(key), lambda: store.exists(key),
                   lambda: store.delete(key), lambda: store.upload_file(key, tmp_path / "file.bin"),
                   lambda: store.download_file(key, tmp_path / "dl.bin"), lambda: store.url(key)):
            with pytest.raises(RunUriError):
                op()
        with pytest.raises(RunUriError):
            check_key(key)
    for prefix in ("..", "../..", "/etc", "a/../.."):
        with pytest.raises(RunUriError):
            store.list(prefix)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("uri", ["s3://bucket/runs/../etc", "s3://bucket/runs/x/..", "s3://bucket/../x",
                                 "s3://bucket/runs/./x", "s3://bucket/runs//x", "s3://bucket/runs/x%2F..%2Fy/z"])
def test_s3_run_uris_that_leave_their_prefix_are_refused(uri):
    with pytest.raises(RunUriError):
        open_store(uri)


@pytest.mark.parametrize("name", ["../../escape", "/tmp/abs", "a/b", ".hidden", "", "x\ny"])
def test_a_config_cannot_put_its_run_folder_outside_runs(name, tmp_path, monkeypatch):
    """`lt-ssl run` without --run names the folder runs/<name>-<time>: the name must stay a name."""
    monkeypatch.chdir(tmp_path)  # runs/../../escape-<time> would land beside tmp_path
    before = sorted(p.name for p in tmp_path.parent.iterdir())
    with pytest.raises(ConfigError, match="must be a plain name"):
        local.run(QUICKSTART, TINY + [f"name={name}"], None, 1, "cpu", False)
    with pytest.raises(ConfigError, match="must be a plain name"):
        load_config(QUICKSTART, [f"name={name}"])
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == before and list(tmp_path.iterdir()) == []
