"""SIGTERM (Kubernetes' eviction notice) and training collapse: the two exits Argo must treat apart.

- SIGTERM: the stage checkpoints at the next step boundary, well inside the grace period, and exits
  75 (EX_TEMPFAIL), which the workflows' retryStrategy retries; the rerun resumes mid-epoch from
  that checkpoint and ends with weights bit-identical to an uninterrupted run.
- Collapse: SimSiam's outputs collapsing to one point (forced here with a dataset of one image and
  no augmentation, so both views of every image are the same) is detected from the std of the
  L2-normalised outputs, reported with the epoch, and exits 3; a diverging loss (a huge lr) exits 3
  too. Exit 3 is never retried, neither by `lt-ssl run` nor by the workflows' retryStrategy.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import torch
import yaml

from lt_ssl.pipeline import local
from lt_ssl.store import open_store
from tests.conftest import QUICKSTART, REPO, TINY

from .conftest import GRACE_S, RESUME, Cli, cifar_overrides, write_cifar10

def _retry_expressions() -> list[str]:
    found = []
    for path in sorted(Path(REPO, "workflows").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            stack = [doc]
            while stack:
                node = stack.pop()
                if isinstance(node, dict):
                    if isinstance(node.get("retryStrategy"), dict):
                        found.append(str(node["retryStrategy"].get("expression", "")))
                    stack.extend(node.values())
                elif isinstance(node, list):
                    stack.extend(node)
    return found


def test_workflows_retry_preemption_and_storage_failures_but_not_bad_input_or_collapse():
    expressions = _retry_expressions()
    assert expressions
    for expr in expressions:
        excluded = {int(n) for n in re.findall(r"exitCode\)\s*!=\s*(\d+)", expr)}
        assert {2, 3} <= excluded, expr  # bad input and collapse are final (4, a regression verdict, may be too)
        assert not excluded & {1, 74, 75}, expr  # unexpected, storage and preemption are retried


def test_sigterm_writes_a_checkpoint_in_the_grace_period_exits_75_and_the_rerun_resumes(forked, tmp_path):
    overrides = TINY + ["pretrain.epochs=10", "pretrain.checkpoint_every=100"]  # no checkpoint before the end
    run, ref = tmp_path / "run", tmp_path / "ref"
    for r in (run, ref):
        rc, log = forked.run(["stage", "prepare", "--run", r.as_uri(), "--config", QUICKSTART, *overrides])
        assert rc == 0, log
    cli = Cli(["stage", "pretrain", "--run", run.as_uri()])  # a real `lt-ssl stage` process, as a pod runs it
    cli.until("[pretrain] epoch 1/10")
    time.sleep(random.Random(7).uniform(0.0, 0.1))  # somewhere in epoch 2
    rc, took = cli.stop(GRACE_S)
    err = cli.log
    assert rc == 75, err
    assert took < GRACE_S / 3, f"{took:.1f} s from SIGTERM to exit"
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    m = re.fullmatch(r"lt-ssl: error: pretrain: SIGTERM received; checkpoint written at epoch (\d+) step (\d+); rerun to resume", last)
    assert m, last
    epoch, step = int(m[1]), int(m[2])
    store = open_store(run.as_uri())
    ckpts = store.list("pretrain/ckpt")
    assert len(ckpts) == 1 and not store.exists("pretrain/_SUCCESS.json")
    state = torch.load(store.root / ckpts[0], map_location="cpu", weights_only=True)
    assert (state["epoch"], state["step"]) == (epoch, step) and 1 <= epoch < 10

    rc, log = forked.run(["stage", "pretrain", "--run", run.as_uri()])
    assert rc == 0, log
    assert [(int(m["epoch"]), int(m["step"])) for m in RESUME.finditer(log)] == [(epoch, step)]
    rc, log = forked.run(["stage", "pretrain", "--run", ref.as_uri()])
    assert rc == 0, log
    a = torch.load(run / "pretrain/model.pt", map_location="cpu", weights_only=True)["model"]
    b = torch.load(ref / "pretrain/model.pt", map_location="cpu", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # mid-epoch resume is exact


def _counting_executor(forked, calls: list, logs: dict):
    def execute(argv, threads, device, debug, progress=True):
        calls.append(argv[2])
        rc, logs[argv[2]] = forked.run(list(argv[1:]) + ["--device", "cpu"])
        return rc

    return execute


def test_collapse_exits_3_naming_the_epoch_and_is_not_retried(forked, tmp_path, monkeypatch):
    root = write_cifar10(tmp_path / "cifar", n=16, distinct=1)  # every image the same
    no_aug = ["augment.flip_p=0", "augment.jitter_p=0", "augment.grayscale_p=0", "augment.blur_p=0", "augment.solarize_p=0",
              "augment.crop_scale_min=1", "augment.crop_scale_max=1", "augment.crop_ratio_min=1", "augment.crop_ratio_max=1"]
    overrides = TINY + cifar_overrides(root) + no_aug + ["pretrain.epochs=3"]
    calls: list[str] = []
    logs: dict[str, str] = {}
    monkeypatch.setattr(local, "_execute", _counting_executor(forked, calls, logs))
    run_uri = (tmp_path / "run").as_uri()
    for attempt in (1, 2):  # the same command twice: the same failure, deterministic
        rc = local.run(QUICKSTART, overrides, run_uri, 1, "cpu", False)
        assert rc == 3
        assert calls == ["prepare", "pretrain"] if attempt == 1 else calls[2:] == ["pretrain"]  # tried once per run
        err = logs["pretrain"]
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert re.fullmatch(r"lt-ssl: error: pretrain: representations collapsed at epoch 1 \(std of normalised outputs "
                            r"\S+ < \S+\); lower the learning rate or raise weight decay", last), last
    assert not open_store(run_uri).exists("pretrain/_SUCCESS.json")


def test_a_diverging_loss_exits_3_naming_the_epoch(forked, tmp_path):
    run_uri = (tmp_path / "run").as_uri()
    rc, log = forked.run(["stage", "prepare", "--run", run_uri, "--config", QUICKSTART, *TINY, "pretrain.lr=1e6"])
    assert rc == 0, log
    rc, log = forked.run(["stage", "pretrain", "--run", run_uri])
    assert rc == 3, log
    assert "Traceback" not in log
    assert re.fullmatch(r"lt-ssl: error: pretrain: loss became nan at epoch \d+ step \d+; lower the learning rate",
                        log.strip().splitlines()[-1]), log
