"""A stop request to a runner, not to a stage: `lt-ssl run` and `lt-ssl experiment run` pass it on.

A user stops a long local run or experiment with `kill <pid>` (or a batch scheduler does, at the end of a job's
time), or with Ctrl-C. The stage must get the request, write its checkpoint and exit 75, as it does under
Kubernetes; the runner then exits 75 too, and the same command resumes from that checkpoint. Before, SIGTERM
killed the runner alone and its stages were SIGKILLed, and Ctrl-C ended every stage without a checkpoint:
either lost up to `checkpoint_every` epochs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from lt_ssl.store import open_store
from tests.conftest import QUICKSTART, TINY

from .conftest import GRACE_S, RESUME, Cli

LONG_PRETRAIN = [*TINY, "pretrain.epochs=10", "pretrain.checkpoint_every=100"]  # no checkpoint before the end


def _command(kind: str, tmp_path: Path) -> tuple[list[str], Path]:
    """The command line and the run folder it trains in."""
    if kind == "run":
        run = tmp_path / "run"
        return ["run", "--config", QUICKSTART, "--run", run.as_uri(), *LONG_PRETRAIN], run
    grid = tmp_path / "sigterm.yaml"
    grid.write_text(yaml.safe_dump({"name": "sigterm", "config": QUICKSTART, "overrides": LONG_PRETRAIN,
                                    "variants": {"SimSiam+C+D": {"model": "student"}},
                                    "axes": [{"data.split": [0]}]}))
    prefix = tmp_path / "cells"
    return ["experiment", "run", str(grid), "--prefix", prefix.as_uri()], prefix / "simsiam-c-d--split-0"


@pytest.mark.parametrize("kind, ctrl_c", [("run", False), ("experiment", False), ("run", True)],
                         ids=["run-sigterm", "experiment-sigterm", "run-ctrl-c"])
def test_a_stop_request_to_the_runner_checkpoints_its_stage_exits_75_and_the_same_command_resumes(kind, ctrl_c,
                                                                                                 tmp_path):
    args, run = _command(kind, tmp_path)
    cli = Cli(args)
    cli.until("[pretrain] epoch 1/10")  # pretrain is in epoch 2; its first checkpoint would be at epoch 10
    rc, took = cli.stop(GRACE_S, ctrl_c=ctrl_c)
    err = cli.log
    assert rc == 75, err
    assert took < GRACE_S / 3, f"{took:.1f} s from SIGTERM to exit"
    assert "Traceback" not in err
    sig = "SIGINT" if ctrl_c else "SIGTERM"  # Ctrl-C reaches the stage itself too; kill reaches it through the runner
    m = re.search(rf"pretrain: {sig} received; checkpoint written at epoch (\d+) step (\d+)", err)
    assert m, err
    what = "each training stage" if kind == "run" else "each running cell"
    assert re.fullmatch(rf"lt-ssl: {sig}: stopped, {what} at a checkpoint; rerun the same command.* to resume",
                        err.strip().splitlines()[-1]), err
    store = open_store(run.as_uri())
    assert not store.exists("pretrain/_SUCCESS.json")
    (ckpt,) = store.list("pretrain/ckpt")
    state = torch.load(store.root / ckpt, map_location="cpu", weights_only=True)
    assert (state["epoch"], state["step"]) == (int(m[1]), int(m[2]))
    assert not any("$ lt-ssl stage" in ln and "pretrain" not in ln and "prepare" not in ln for ln in cli.seen), err

    again = Cli(args)  # the same command: the run's lock was released, pretrain resumes, the run ends
    err = again.finish()
    assert again.proc.returncode == 0, err
    assert [(int(r["epoch"]), int(r["step"])) for r in RESUME.finditer(err)] == [(int(m[1]), int(m[2]))], err
    assert store.exists("evaluate/_SUCCESS.json")
