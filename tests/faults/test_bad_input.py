"""Bad input, table-driven: every case goes through the real CLI entry point (`lt_ssl.cli.main`) and
must give exactly one line on stderr, `lt-ssl: error: <what is wrong>; <what to do>`, a non-zero
exit (2 for what the user must fix, 74 for storage), no Python traceback (unless --debug), nothing
on stdout, and must leave every existing run as it was: the runs folder's files, sizes, mtimes and
hashes are compared before and after (a prepare that fails on a *new* run may leave that run's
config.yaml, and nothing else).

The existing runs, on a tiny CIFAR-10 written here in the official pickle layout:
- `base`: prepare, pretrain and cluster done with cluster.k=8 on 4 distinct images, so k-means leaves
  clusters 4..7 empty; no expert done yet (checkpoint cases plant files in expert/0/ckpt/).
- `bigk`: prepare and pretrain done with cluster.k=1000 > 100 images.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import subprocess
import sys
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from lt_ssl.cli import main
from lt_ssl.config import load_config
from lt_ssl.pipeline.stages import run_stage
from lt_ssl.store import open_store
from tests.conftest import QUICKSTART, TINY

from .conftest import ONE_THREAD, cifar_batch_bytes, cifar_overrides, malicious_pickle, snapshot, torch_bytes, write_cifar10

N = 20  # images per CIFAR batch: 100 training images


@dataclass
class Ctx:
    runs: Path  # holds the existing runs; snapshotted around every case
    cifar: Path  # a good tiny CIFAR-10
    tmp: Path  # this case's scratch folder (bad files), outside `runs`
    request: pytest.FixtureRequest
    monkeypatch: pytest.MonkeyPatch
    fresh: Path = None  # a run that does not exist yet
    s3: object = None
    marker: Path = None  # created if a malicious pickle ever runs

    @property
    def base(self) -> Path:
        return self.runs / "base"

    @property
    def bigk(self) -> Path:
        return self.runs / "bigk"

    def bad_cifar(self, **replace: bytes) -> Path:
        """A copy of the good CIFAR with some files replaced (b"" keeps an empty file; None deletes)."""
        root = self.tmp / "cifar"
        if not root.exists():
            shutil.copytree(self.cifar, root)
        for name, data in replace.items():
            if data is None:
                (root / name).unlink()
            else:
                (root / name).write_bytes(data)
        return root

    def s3_env(self):
        if self.s3 is None:
            self.s3 = self.request.getfixturevalue("s3_bucket")
        return self.s3


def prepare_digits(*extra: str) -> Callable[[Ctx], list[str]]:
    return lambda c: ["stage", "prepare", "--run", c.fresh.as_uri(), "--config", QUICKSTART, *TINY, *extra]


def prepare_cifar(root: Callable[[Ctx], Path] | None = None, *extra: str) -> Callable[[Ctx], list[str]]:
    def argv(c: Ctx) -> list[str]:
        r = root(c) if root else c.cifar
        return ["stage", "prepare", "--run", c.fresh.as_uri(), "--config", QUICKSTART, *TINY, *cifar_overrides(r), *extra]

    return argv


def with_config_file(text: str) -> Callable[[Ctx], list[str]]:
    def argv(c: Ctx) -> list[str]:
        path = c.tmp / "config.yaml"
        path.write_text(text)
        return ["stage", "prepare", "--run", c.fresh.as_uri(), "--config", str(path)]

    return argv


def on_base(*args: str) -> Callable[[Ctx], list[str]]:
    return lambda c: ["stage", *args[:1], "--run", c.base.as_uri(), *args[1:]]


def plant(key: str, data: Callable[[Ctx], bytes]) -> Callable[[Ctx], None]:
    """Put a file into the base run before the snapshot (the case's teardown removes or restores it)."""

    def setup(c: Ctx) -> None:
        path = c.base / key
        if path.exists():
            shutil.copy2(path, c.tmp / "saved")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data(c))

    return setup


def unplant(key: str) -> Callable[[Ctx], None]:
    def teardown(c: Ctx) -> None:
        path = c.base / key
        if (c.tmp / "saved").exists():
            shutil.copy2(c.tmp / "saved", path)
        else:
            path.unlink(missing_ok=True)
            if path.parent.name == "ckpt" and not any(path.parent.iterdir()):
                shutil.rmtree(path.parent.parent)

    return teardown


def ckpt(arch: str = "simsiam/small_cnn", model: dict | None = None) -> Callable[[Ctx], bytes]:
    import torch

    def data(c: Ctx) -> bytes:
        state = model if model is not None else {"conv.weight": torch.zeros(3)}
        return torch_bytes({"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 0, "step": 1,
                            "global_step": 1, "arch": arch})

    return data


def s3_prepare(c: Ctx, uri: str) -> list[str]:
    return ["stage", "prepare", "--run", uri, "--config", QUICKSTART, *TINY]


def _wrong_credentials(c: Ctx) -> None:
    s3 = c.s3_env()
    open_store(s3.uri("runs/existing")).write_text("config.yaml", "existing: run\n")  # a run that must stay as it is
    c.monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNUNKNOWN00")


def _iam(c: Ctx):
    from moto.core.authorization import enable_iam_authentication

    return enable_iam_authentication()  # moto checks credentials only inside this block


def _dead_endpoint(c: Ctx) -> None:
    import socket

    c.s3_env()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c.monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    c.monkeypatch.setenv("LT_SSL_S3_CONNECT_TIMEOUT", "1")


@dataclass
class Case:
    id: str
    argv: Callable[[Ctx], list[str]]
    expect: str  # substring of the error line: what is wrong and what to do
    code: int = 2
    setup: Callable[[Ctx], None] | None = None
    teardown: Callable[[Ctx], None] | None = None
    no_marker: bool = False  # a malicious pickle was offered: its command must not have run
    around: Callable[[Ctx], object] | None = None  # a context manager around the command only


def _batch(**kw) -> bytes:
    return cifar_batch_bytes(N, seed=1, **kw)


GOOD = _batch()
CASES = [
    # ---------------------------------------------------------------- config
    Case("unknown-config-key-override", prepare_digits("pretrain.epoch=3"),
         "unknown config key 'pretrain.epoch' in override; see configs/*.yaml for the keys"),
    Case("unknown-config-key-in-file", with_config_file("name: x\npretrian:\n  epochs: 1\n"),
         "unknown config key 'pretrian'; known keys here: name, seed"),
    Case("wrong-type-int", prepare_digits("pretrain.epochs=abc"), "config key 'pretrain.epochs' must be int, got 'abc'"),
    Case("wrong-type-float", prepare_digits("data.imbalance=[1,2]"), "config key 'data.imbalance' must be float, got [1, 2]"),
    Case("wrong-type-bool", prepare_digits("baseline.enabled=maybe"), "config key 'baseline.enabled' must be bool, got 'maybe'"),
    Case("wrong-type-section", with_config_file("pretrain: 3\n"), "config key 'pretrain' must be a mapping of TrainConfig fields"),
    Case("zero-imbalance", prepare_digits("data.imbalance=0"), "data.imbalance must be >= 1 (N_max/N_min; 1 = balanced), got 0"),
    Case("negative-imbalance", prepare_digits("data.imbalance=-10"), "data.imbalance must be >= 1"),
    Case("zero-clusters", prepare_digits("cluster.k=0"), "cluster.k must be >= 1, got 0"),
    Case("ambiguous-override", prepare_digits("epochs=3"), "override key 'epochs' is ambiguous: use one of pretrain.epochs"),
    Case("unknown-choice", prepare_digits("backbone=resnet1000"), "config key 'backbone' must be one of resnet18_cifar, resnet18, small_cnn, vit_tiny, vit_tiny_p7"),
    Case("missing-config-file", lambda c: ["stage", "prepare", "--run", c.fresh.as_uri(), "--config", str(c.tmp / "nope.yaml")],
         "does not exist; see configs/ for examples"),
    Case("config-not-yaml", with_config_file("seed: [1, 2\n"), "is not valid YAML"),
    Case("config-not-a-mapping", with_config_file("- 1\n- 2\n"), "must hold a YAML mapping, got list"),
    Case("config-given-to-a-later-stage", on_base("pretrain", "--config", QUICKSTART),
         "stage pretrain reads the run's config.yaml; --config and overrides go to stage prepare"),
    Case("other-config-for-an-existing-run",
         lambda c: ["stage", "prepare", "--run", c.base.as_uri(), "--config", QUICKSTART, *TINY, *cifar_overrides(c.cifar), "cluster.k=2"],
         "already holds a run with a different config; use a new --run"),
    # ---------------------------------------------------------------- data
    Case("cifar-root-missing", prepare_cifar(lambda c: c.tmp / "no-such-folder"),
         "not found: pass data.root=<folder with the python batches (cifar-10-batches-py)> or download with --download"),
    Case("cifar-batch-missing", prepare_cifar(lambda c: c.bad_cifar(data_batch_3=None)), "data_batch_3 not found: pass data.root="),
    Case("cifar-corrupt", prepare_cifar(lambda c: c.bad_cifar(data_batch_2=os.urandom(5000))),
         "the file is truncated or corrupt; download it again"),
    Case("cifar-truncated", prepare_cifar(lambda c: c.bad_cifar(data_batch_2=GOOD[: len(GOOD) // 2])),
         "the file is truncated or corrupt; download it again"),
    Case("cifar-empty-file", prepare_cifar(lambda c: c.bad_cifar(test_batch=b"")), "the file is truncated or corrupt; download it again"),
    Case("cifar-pickle-runs-code", prepare_cifar(lambda c: c.bad_cifar(data_batch_1=malicious_pickle(c.marker))),
         "refusing to unpickle posix.system", no_marker=True),
    Case("cifar-not-a-dict", prepare_cifar(lambda c: c.bad_cifar(data_batch_4=pickle.dumps([1, 2, 3], protocol=2))),
         "holds a list, not a CIFAR batch dict: download it again"),
    Case("cifar-missing-labels", prepare_cifar(lambda c: c.bad_cifar(data_batch_5=_batch(label_key=b"fine_labels"))),
         "lacks key(s) ['labels']: it is not a CIFAR-10 python batch; check data.root and the dataset name"),
    Case("cifar-wrong-shape", prepare_cifar(lambda c: c.bad_cifar(data_batch_1=_batch(data=np.zeros((N, 1024), np.uint8)))),
         "has data uint8 (20, 1024), expected uint8 (N, 3072): the file is corrupt; download it again"),
    Case("cifar-wrong-dtype", prepare_cifar(lambda c: c.bad_cifar(data_batch_1=_batch(data=np.zeros((N, 3072), np.float32)))),
         "has data float32 (20, 3072), expected uint8 (N, 3072)"),
    Case("cifar-label-out-of-range", prepare_cifar(lambda c: c.bad_cifar(data_batch_2=_batch(labels=[10] * N))),
         "has labels in [10, 10], outside [0, 10): wrong dataset name or a corrupt file"),
    Case("cifar-negative-label", prepare_cifar(lambda c: c.bad_cifar(test_batch=_batch(labels=[-1] + [0] * (N - 1)))),
         "outside [0, 10)"),
    Case("cifar-label-count", prepare_cifar(lambda c: c.bad_cifar(data_batch_3=_batch(labels=[0] * (N - 1)))),
         "has 20 images but 19 labels: the file is corrupt; download it again"),
    Case("cifar-wrong-dataset-name", prepare_cifar(None, "data.dataset=cifar100"), "CIFAR-100 file"),
    Case("cifar-blank-images", prepare_cifar(lambda c: write_cifar10(c.tmp / "blank", N, distinct=1) and _blank(c.tmp / "blank")),
         "zero pixel variance"),
    Case("data-root-not-a-path", prepare_cifar(None, "data.root=http://example.com/cifar"),
         "use a local folder, file:///abs/path or s3://bucket/prefix"),
    # ---------------------------------------------------------------- run URIs
    Case("run-uri-http", lambda c: ["stage", "pretrain", "--run", "http://example.com/runs/x"],
         "has scheme 'http'; use file:///abs/path or s3://bucket/prefix"),
    Case("run-uri-gs", lambda c: ["stage", "prepare", "--run", "gs://bucket/runs/x", "--config", QUICKSTART],
         "has scheme 'gs'; use file:///abs/path or s3://bucket/prefix"),
    Case("run-uri-file-with-host", lambda c: ["stage", "pretrain", "--run", "file://otherhost/runs/x"],
         "names a host; use file:///abs/path (three slashes)"),
    Case("run-uri-s3-without-prefix", lambda c: ["stage", "pretrain", "--run", "s3://bucket"],
         "needs a bucket and a prefix: s3://bucket/runs/<id>"),
    Case("run-uri-s3-dotdot", lambda c: ["stage", "pretrain", "--run", "s3://bucket/runs/../etc"],
         "has an empty, '.' or '..' part or odd characters; use s3://bucket/runs/<id>"),
    # ---------------------------------------------------------------- stages
    Case("k-larger-than-images", lambda c: ["stage", "cluster", "--run", c.bigk.as_uri()],
         "cluster.k=1000 is larger than the number of training images (100); lower cluster.k"),
    Case("expert-for-an-empty-cluster", on_base("expert", "--cluster", "5"),
         "expert --cluster 5 does not exist: the non-empty clusters are [0, 1, 2, 3]"),
    Case("expert-id-does-not-exist", on_base("expert", "--cluster", "99"), "expert --cluster 99 does not exist"),
    Case("expert-id-negative", on_base("expert", "--cluster", "-1"), "expert --cluster -1 does not exist"),
    Case("expert-without-cluster", on_base("expert"), "--cluster K is required for stage expert: it runs once per cluster id"),
    Case("cluster-for-another-stage", on_base("pretrain", "--cluster", "0"), "stage pretrain takes no --cluster K: it runs once"),
    Case("stage-before-its-inputs", on_base("distill"), "experts [0, 1, 2, 3] are not done: run `lt-ssl stage expert --cluster K --run"),
    Case("run-without-config", lambda c: ["stage", "pretrain", "--run", (c.runs / "empty").as_uri()],
         "has no config.yaml; run `lt-ssl stage prepare --run"),
    # ---------------------------------------------------------------- checkpoints
    Case("checkpoint-of-another-architecture", on_base("expert", "--cluster", "0"),
         "holds a 'simclr/small_cnn/128' model, this stage builds 'simsiam/small_cnn'; use a new run",
         setup=plant("expert/0/ckpt/step-000000001.pt", ckpt("simclr/small_cnn/128")),
         teardown=unplant("expert/0/ckpt/step-000000001.pt")),
    Case("checkpoint-with-other-shapes", on_base("expert", "--cluster", "0"), "does not fit this model (Error(s) in loading state_dict for SimSiam: Missing key(s)",
         setup=plant("expert/0/ckpt/step-000000001.pt", ckpt()), teardown=unplant("expert/0/ckpt/step-000000001.pt")),
    Case("checkpoint-not-a-checkpoint", on_base("expert", "--cluster", "0"),
         "is not a readable checkpoint (", setup=plant("expert/0/ckpt/step-000000001.pt", lambda c: os.urandom(3000)),
         teardown=unplant("expert/0/ckpt/step-000000001.pt")),
    Case("checkpoint-empty-file", on_base("expert", "--cluster", "0"), "; delete it and rerun the stage",
         setup=plant("expert/0/ckpt/step-000000001.pt", lambda c: b""), teardown=unplant("expert/0/ckpt/step-000000001.pt")),
    Case("checkpoint-not-a-dict", on_base("expert", "--cluster", "0"), "is not an lt-ssl checkpoint; delete it and rerun the stage",
         setup=plant("expert/0/ckpt/step-000000001.pt", lambda c: torch_bytes([1, 2, 3])),
         teardown=unplant("expert/0/ckpt/step-000000001.pt")),
    Case("checkpoint-runs-code", on_base("expert", "--cluster", "0"), "is not a readable checkpoint (",
         setup=plant("expert/0/ckpt/step-000000001.pt", lambda c: malicious_pickle(c.marker)),
         teardown=unplant("expert/0/ckpt/step-000000001.pt"), no_marker=True),
    Case("model-of-another-architecture", on_base("expert", "--cluster", "1"),
         "pretrain/model.pt holds a 'simclr/small_cnn/128' model, this stage builds 'simsiam/small_cnn'",
         setup=plant("pretrain/model.pt", ckpt("simclr/small_cnn/128")), teardown=unplant("pretrain/model.pt")),
    # ---------------------------------------------------------------- storage
    Case("s3-wrong-credentials", lambda c: s3_prepare(c, c.s3_env().uri("runs/existing")),
         "refused the credentials", code=2, setup=_wrong_credentials, around=_iam),  # a user's fix: no retry
    Case("s3-missing-bucket", lambda c: s3_prepare(c, f"s3://no-such-bucket-{uuid.uuid4().hex[:6]}/runs/x"),
         "does not exist at http://127.0.0.1", code=2, setup=lambda c: c.s3_env()),
    Case("s3-endpoint-unreachable", lambda c: s3_prepare(c, "s3://bucket/runs/x"), "; check AWS_ENDPOINT_URL", code=74,
         setup=_dead_endpoint),
    Case("s3-bad-tuning-variable", lambda c: s3_prepare(c, c.s3_env().uri("runs/x")), "LT_SSL_S3_MAX_ATTEMPTS='many' is not a number",
         setup=lambda c: (c.s3_env(), c.monkeypatch.setenv("LT_SSL_S3_MAX_ATTEMPTS", "many"))),
    # ---------------------------------------------------------------- CLI
    Case("workers-zero", lambda c: ["run", "--config", QUICKSTART, "--run", c.fresh.as_uri(), "--workers", "0"],
         "--workers must be >= 1, got 0"),
]


def _blank(root: Path) -> Path:
    """Rewrite a CIFAR folder so every pixel of every image is 0."""
    for p in root.iterdir():
        p.write_bytes(cifar_batch_bytes(N, seed=2, data=np.zeros((N, 3072), np.uint8)))
    return root


@pytest.fixture(scope="module")
def existing(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("bad-input")
    cifar = write_cifar10(base / "cifar", N, distinct=4)
    runs = base / "runs"
    for name, k, stages in (("base", 8, ("prepare", "pretrain", "cluster")), ("bigk", 1000, ("prepare", "pretrain"))):
        store = open_store((runs / name).as_uri())
        cfg = load_config(QUICKSTART, TINY + cifar_overrides(cifar) + [f"cluster.k={k}"])
        for stage in stages:
            with warnings.catch_warnings():  # k-means: "Number of distinct clusters (4) found smaller than n_clusters (8)"
                warnings.simplefilter("ignore")
                assert run_stage(stage, store, cfg if stage == "prepare" else None) == "done"
    assert open_store((runs / "base").as_uri()).read_json("cluster/clusters.json") == [0, 1, 2, 3]
    (runs / "empty").mkdir()
    return runs, cifar


def test_the_table_is_big_enough():
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_nonzero_and_changes_nothing(case: Case, existing, tmp_path, request, monkeypatch, capsys):
    runs, cifar = existing
    ctx = Ctx(runs=runs, cifar=cifar, tmp=tmp_path, request=request, monkeypatch=monkeypatch,
              fresh=runs / f"fresh-{uuid.uuid4().hex[:8]}", marker=tmp_path / "PWNED")
    if case.setup:
        case.setup(ctx)
    try:
        argv = case.argv(ctx)
        s3_before = _s3_listing(ctx)
        before = snapshot(runs)
        capsys.readouterr()
        with case.around(ctx) if case.around else contextlib.nullcontext():
            code = main(argv)
        out, err = capsys.readouterr()
        after = snapshot(runs)
        s3_after = _s3_listing(ctx)
    finally:
        if case.teardown:
            case.teardown(ctx)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == case.code, err
    assert len(lines) == 1, err
    assert lines[0].startswith("lt-ssl: error: "), lines[0]
    assert case.expect in lines[0], lines[0]
    assert "Traceback" not in err and out == ""
    changed = sorted(k for k in before if after.get(k) != before[k])
    added = sorted(set(after) - set(before) - {f"{ctx.fresh.name}/config.yaml"})
    assert changed == [] and added == [], f"changed {changed}, added {added}"
    assert s3_after == s3_before
    if case.no_marker:
        assert not ctx.marker.exists(), "the malicious pickle ran its command"


def _s3_listing(ctx: Ctx) -> list:
    if ctx.s3 is None:
        return []
    objs = ctx.s3.client.list_objects_v2(Bucket=ctx.s3.bucket).get("Contents", [])
    return sorted((o["Key"], o["ETag"], o["LastModified"]) for o in objs)


def test_debug_shows_the_traceback(existing, capsys):
    runs, _ = existing
    assert main(["stage", "expert", "--run", (runs / "base").as_uri(), "--cluster", "99", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("lt-ssl: error: ")


def test_the_cli_process_prints_one_line_and_no_traceback(existing, tmp_path):
    """The same through a fresh `python -m lt_ssl` process: a malicious CIFAR pickle is refused."""
    _, cifar = existing
    bad = tmp_path / "cifar"
    shutil.copytree(cifar, bad)
    marker = tmp_path / "PWNED"
    (bad / "data_batch_1").write_bytes(malicious_pickle(marker))
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "lt_ssl", "stage", "prepare", "--run", run.as_uri(), "--config", QUICKSTART,
                           *TINY, *cifar_overrides(bad)], capture_output=True, text=True, timeout=300,
                          env=os.environ | ONE_THREAD)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lt-ssl: error: refusing to unpickle posix.system from "), proc.stderr
    assert not marker.exists()
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]
