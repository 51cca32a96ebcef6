"""`lt-ssl run`: the run's plan as `lt-ssl stage` subprocesses, scheduled like Argo schedules its DAG.

A stage starts once every stage it needs has finished; up to `workers` stage processes (a fan-out stage counts
one per cluster) run at once and share the cores. With workers=1 the stages run one by one in plan order.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from ..config import config_hash, load_config
from ..errors import LtSslError
from ..progress import PROGRESS_ENV
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


def _execute(argv: list[str], threads: int, device: str | None, debug: bool, progress: bool = True) -> int:
    cmd = [sys.executable, "-m", "lt_ssl", *argv[1:]]  # argv[0] is "lt-ssl": same CLI, no PATH lookup
    if device:
        cmd += ["--device", device]
    if debug:
        cmd += ["--debug"]
    env = os.environ | {"LT_SSL_THREADS": str(threads)} | ({} if progress else {PROGRESS_ENV: "0"})
    print("$ " + " ".join(argv), file=sys.stderr, flush=True)
    return subprocess.run(cmd, env=env, preexec_fn=_die_with_parent).returncode


def default_run_uri(name: str) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs", f"{name}-{stamp}").resolve().as_uri()


# Default stage processes at once: more than 4 rarely has work (the recipe's widest point is the baseline beside
# the experts) and each process holds its own copy of the data.
MAX_DEFAULT_WORKERS = 4


def cores() -> int:
    """The cores this runner may use: LT_SSL_THREADS (a parent runner's share of the machine), else the CPU count."""
    return int(os.environ.get("LT_SSL_THREADS") or os.cpu_count() or 1)


def run(config: str, overrides: list[str], run_uri: str | None, workers: int | None, device: str | None,
        debug: bool) -> int:
    cfg = load_config(config, overrides)  # fail on a bad config before any process starts
    run_uri = normalize_uri(run_uri) if run_uri else default_run_uri(cfg.name)
    store = open_store(run_uri)
    print(f"run: {run_uri}", file=sys.stderr)
    write_config_once(store, cfg)  # refuses a different config for an existing run before anything runs
    chash = config_hash(cfg)
    cpus = cores()
    workers = workers or min(cpus, MAX_DEFAULT_WORKERS)

    def pending(stage: str, cluster: int | None = None) -> bool:
        # Checked here, without starting a process: resuming a long run costs no torch imports.
        if is_done(store, stage_prefix(stage, cluster), chash):
            print(f"[{stage_prefix(stage, cluster)}] already done for config {chash}; skipping", file=sys.stderr)
            return False
        return True

    plan = plan_of(cfg)
    with tempfile.TemporaryDirectory(prefix="lt-ssl-") as tmp:
        outputs = {s.name: os.path.join(tmp, s.output.path.rsplit("/", 1)[-1]) for s in plan.stages if s.output}
        finished: set[str] = set()  # stages whose every task is done
        waiting = list(plan.stages)  # not started, in plan order
        ready: list[tuple[str, list[str]]] = []  # (stage, argv) whose needs are met, not yet started
        left: dict[str, int] = {}  # started stage -> its tasks still running
        running: dict[Future, str] = {}
        started: set[str] = set()  # stages with a task submitted
        code = 0
        with ThreadPoolExecutor(workers) as ex:
            while True:
                unblocked = True
                while unblocked:  # a stage with nothing left to do (resumed) may unblock the next at once
                    unblocked = False
                    for stage in [s for s in waiting if set(s.needs) <= finished]:
                        waiting.remove(stage)
                        if stage.fan_out:
                            with open(outputs[stage.fan_out]) as f:
                                ids = json.load(f)
                            tasks = [stage_argv(stage, run_uri, cluster=k) for k in ids if pending(stage.name, k)]
                        else:
                            argv = stage_argv(stage, run_uri, config=str(config), overrides=overrides,
                                              output_path=outputs.get(stage.name))
                            tasks = [argv] if pending(stage.name) else []
                            if not tasks and any(s.fan_out == stage.name for s in plan.stages):  # as withParam
                                write_output(stage.output, store, outputs[stage.name])
                        ready += [(stage.name, argv) for argv in tasks]
                        left[stage.name] = len(tasks)
                        if not tasks:
                            finished.add(stage.name)
                            unblocked = True
                # After a failure no new stage starts, but a fan-out's remaining tasks still do (their work is
                # independent and kept for the resume, as Argo runs every withParam item).
                startable = [t for t in ready if code == 0 or t[0] in started]
                start = startable[:max(0, workers - len(running))]
                for t in start:
                    ready.remove(t)
                    started.add(t[0])
                threads = max(1, cpus // max(1, len(running) + len(start)))  # share the cores, never oversubscribe
                alone = workers == 1 or (not running and len(start) == 1 and not startable[1:])
                for name, argv in start:  # two progress lines on one terminal overwrite each other: only a lone stage draws
                    running[ex.submit(_execute, argv, threads, device, debug, alone)] = name
                if not running:
                    if code == 0 and waiting:  # only a plan whose needs name no earlier stage could get here
                        raise LtSslError(f"stages {[s.name for s in waiting]} never became ready in plan {plan.name}")
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    name = running.pop(future)
                    rc = future.result()
                    if rc != 0 and code == 0:
                        code = rc
                        print(f"lt-ssl: stage {name} failed (exit {code}); fix the cause and rerun the same command "
                              f"with --run {run_uri} to resume", file=sys.stderr)
                    left[name] -= 1
                    if left[name] == 0 and rc == 0:
                        finished.add(name)
        if code != 0:
            return code
    metrics = store.read_json("evaluate/metrics.json")
    print(results_table(metrics["models"]))
    print(f"\nrun folder: {run_uri}\nreport: {run_uri}/evaluate/report.md")
    return 0
