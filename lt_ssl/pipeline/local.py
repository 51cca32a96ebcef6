"""`lt-ssl run`: the stages of the run's plan in order as `lt-ssl stage` subprocesses, fan-outs in a process pool."""

from __future__ import annotations

import ctypes
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..config import config_hash, load_config
from ..store import normalize_uri, open_store
from .contract import is_done, plan_of, stage_prefix, write_config_once, write_output
from .plan import stage_argv
from .report import results_table


def _die_with_parent() -> None:
    """Children get SIGKILL when the runner dies, so a killed run leaves no stage still writing."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _execute(argv: list[str], threads: int, device: str | None, debug: bool) -> int:
    cmd = [sys.executable, "-m", "lt_ssl", *argv[1:]]  # argv[0] is "lt-ssl": same CLI, no PATH lookup
    if device:
        cmd += ["--device", device]
    if debug:
        cmd += ["--debug"]
    env = os.environ | {"LT_SSL_THREADS": str(threads)}
    print("$ " + " ".join(argv), file=sys.stderr, flush=True)
    return subprocess.run(cmd, env=env, preexec_fn=_die_with_parent).returncode


def default_run_uri(name: str) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs", f"{name}-{stamp}").resolve().as_uri()


def run(config: str, overrides: list[str], run_uri: str | None, workers: int, device: str | None, debug: bool) -> int:
    cfg = load_config(config, overrides)  # fail on a bad config before any process starts
    run_uri = normalize_uri(run_uri) if run_uri else default_run_uri(cfg.name)
    store = open_store(run_uri)
    print(f"run: {run_uri}", file=sys.stderr)
    write_config_once(store, cfg)  # refuses a different config for an existing run before anything runs
    chash = config_hash(cfg)
    cpus = int(os.environ.get("LT_SSL_THREADS") or os.cpu_count() or 1)  # `experiment --parallel` shares the cores

    def pending(stage: str, cluster: int | None = None) -> bool:
        # Checked here, without starting a process: resuming a long run costs no torch imports.
        if is_done(store, stage_prefix(stage, cluster), chash):
            print(f"[{stage_prefix(stage, cluster)}] already done for config {chash}; skipping", file=sys.stderr)
            return False
        return True

    plan = plan_of(cfg)
    with tempfile.TemporaryDirectory(prefix="lt-ssl-") as tmp:
        outputs = {s.name: os.path.join(tmp, s.output.path.rsplit("/", 1)[-1]) for s in plan.stages if s.output}
        for stage in plan.stages:
            if not stage.fan_out:
                argv = stage_argv(stage, run_uri, config=str(config), overrides=overrides,
                                  output_path=outputs.get(stage.name))
                if pending(stage.name):
                    code = _execute(argv, cpus, device, debug)
                else:
                    code = 0
                    if any(s.fan_out == stage.name for s in plan.stages):  # a later fan-out reads it, as withParam
                        write_output(stage.output, store, outputs[stage.name])
            else:
                with open(outputs[stage.fan_out]) as f:
                    ids = [k for k in json.load(f) if pending(stage.name, k)]
                pool = max(1, min(workers, len(ids)))
                threads = max(1, cpus // pool)  # share the cores instead of oversubscribing them
                with ThreadPoolExecutor(pool) as ex:
                    codes = list(ex.map(lambda k: _execute(stage_argv(stage, run_uri, cluster=k), threads, device, debug),
                                        ids))
                code = next((c for c in codes if c != 0), 0)
            if code != 0:
                print(f"lt-ssl: stage {stage.name} failed (exit {code}); fix the cause and rerun the same command "
                      f"with --run {run_uri} to resume", file=sys.stderr)
                return code
    metrics = store.read_json("evaluate/metrics.json")
    print(results_table(metrics["models"]))
    print(f"\nrun folder: {run_uri}\nreport: {run_uri}/evaluate/report.md")
    return 0
