"""`lt-ssl run`: the run's plan as `lt-ssl stage` processes, scheduled like Argo schedules its DAG.

A stage starts once every stage it needs has finished; up to `workers` stage processes (a fan-out stage counts
one per cluster) run at once and share the cores. With workers=1 the stages run one by one in plan order.

Each stage is its own process, as each is its own pod on Argo, but not a fresh interpreter: the processes are
forked from one server (multiprocessing's forkserver) that imported torch and the stages once, when the run
began. A fresh `python -m lt_ssl` paid ~3 s of CPU in imports per stage, most of the quickstart's non-compute
time (benchmarks/README.md). The server runs no torch op, so every fork starts with no thread pool and sets
its own thread count; the child then runs the same CLI entry point with the same arguments and environment.

One runner at a time per run: the runner holds the run's lock (RUNNER_LOCK) from before it writes the config
until its last stage ends, so a second `lt-ssl run` or `lt-ssl experiment run` on the same run URI stops with
one line naming the holder, instead of both writing the same artifacts. `lt-ssl stage` takes no lock: on Argo
the workflow controller is the one scheduler.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import multiprocessing.reduction
import os
import select
import signal
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from ..config import Config, config_hash, load_config
from ..errors import EXIT_PREEMPTED, LtSslError
from ..progress import PROGRESS_ENV
from ..store import Store, normalize_uri, open_store
from .contract import is_done, plan_of, stage_prefix, write_config_once, write_output
from .plan import stage_argv
from .report import results_table
from .forward_stop import ForwardStop


def _die_with_runner(runner: int) -> None:
    """SIGKILL this stage when the runner (pid `runner`) ends, so a killed run leaves no stage still writing.

    Not PR_SET_PDEATHSIG: a stage's parent is the fork server, which outlives the runner while any stage runs.
    A daemon thread waits on a pidfd of the runner (readable when it exits; Linux >= 5.3), else polls it.
    """

    def gone() -> None:
        try:
            pidfd = os.pidfd_open(runner)
        except ProcessLookupError:  # already gone
            pass
        except (AttributeError, OSError):  # no pidfd here (macOS, an old kernel): look once a second
            while _runner_alive(runner):
                time.sleep(1.0)
        else:
            select.select([pidfd], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=gone, name="die-with-runner", daemon=True).start()


def _runner_alive(pid: int) -> bool:
    """Whether our runner (a process of this user) still runs. Unlike store.local._alive, which keeps another
    user's temp files, a pid owned by another user answers no: the pid was reused."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the pid now belongs to another user's process: our runner (same user) is gone
        return False
    return True


# What the stages import, loaded once by the fork server: torch, the stages, their data loaders and models, plus
# what stages import inside their bodies (~0.3-1 s of CPU each): torch._dynamo, which the first torch.optim
# optimizer imports; scikit-learn's datasets, for the digits loader; matplotlib's Figure and Agg canvas, for the
# plots of cluster and evaluate (lt_ssl/plots.py imports them lazily, so a pod that draws nothing skips them).
_PRELOAD = ["lt_ssl.cli", "lt_ssl.pipeline.stages", "torch._dynamo", "sklearn.datasets", "matplotlib.figure",
            "matplotlib.backends.backend_agg"]
_forks = multiprocessing.get_context("forkserver")
_forks.set_forkserver_preload(_PRELOAD)


class _RunnerStdio:
    """The runner's stdout and stderr as they are when a stage starts, handed to the stage's process.

    A fork inherits the fork server's stdio, fixed when the server started; a redirect or a test's capture since
    then would not see the stage's output. Pickled (as the process starts) into fds the child receives.
    """

    def __getstate__(self) -> list:
        return [multiprocessing.reduction.DupFd(fd) for fd in (1, 2)]

    def __setstate__(self, fds: list) -> None:
        self.fds = fds

    def install(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for target, fd in zip((1, 2), self.fds):
            os.dup2(fd.detach(), target)


def _stage_process(args: list[str], env: dict[str, str], stdio: _RunnerStdio, runner: int) -> None:
    """A stage's process body: the `lt-ssl` CLI with the runner's arguments, environment and stdio."""
    _die_with_runner(runner)
    stdio.install()
    os.environ.clear()
    os.environ.update(env)
    from ..cli import main

    sys.exit(main(args))


def _execute(argv: list[str], threads: int, device: str | None, debug: bool, progress: bool = True) -> int:
    args = argv[1:]  # argv[0] is "lt-ssl"
    if device:
        args += ["--device", device]
    if debug:
        args += ["--debug"]
    env = os.environ | {"LT_SSL_THREADS": str(threads)} | ({} if progress else {PROGRESS_ENV: "0"})
    print("$ " + " ".join(argv), file=sys.stderr, flush=True)

    def start() -> multiprocessing.process.BaseProcess:
        proc = _forks.Process(target=_stage_process, args=(args, env, _RunnerStdio(), os.getpid()))
        proc.start()
        return proc

    proc = _STOP.start(start)
    if proc is None:  # the runner was asked to stop before this stage began
        return EXIT_PREEMPTED
    try:
        proc.join()
    finally:
        _STOP.release(proc)
    return proc.exitcode  # negative: killed by that signal, as subprocess reports it


def default_run_uri(name: str) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs", f"{name}-{stamp}").resolve().as_uri()


# Default stage processes at once: more than 4 rarely has work (the recipe's widest point is the baseline beside
# the experts) and each process holds its own copy of the data.
MAX_DEFAULT_WORKERS = 4
RUNNER_LOCK = ".runner.lock"  # hidden: a local run folder's listing does not show it
# Signals are the process's, not a run's: one forwarder, entered by each run this process makes.
_STOP = ForwardStop()


def cores() -> int:
    """The cores this runner may use: LT_SSL_THREADS (a parent runner's share of the machine), else the CPU count."""
    return int(os.environ.get("LT_SSL_THREADS") or os.cpu_count() or 1)


def run(config: str, overrides: list[str], run_uri: str | None, workers: int | None, device: str | None,
        debug: bool) -> int:
    cfg = load_config(config, overrides)  # fail on a bad config before any process starts
    run_uri = normalize_uri(run_uri) if run_uri else default_run_uri(cfg.name)
    store = open_store(run_uri)
    print(f"run: {run_uri}", file=sys.stderr)
    since = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    holder = f"lt-ssl run (pid {os.getpid()} on {socket.gethostname()}, since {since})"
    with store.lock(RUNNER_LOCK, holder), _STOP:
        write_config_once(store, cfg)  # refuses a different config for an existing run before anything runs
        return _run_plan(cfg, store, run_uri, config, overrides, workers, device, debug)


def _run_plan(cfg: Config, store: Store, run_uri: str, config: str, overrides: list[str], workers: int | None,
              device: str | None, debug: bool) -> int:
    """Run the stages of cfg's plan that are not done yet; the caller holds the run's lock."""
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
                startable = [t for t in ready if not _STOP.stopping and (code == 0 or t[0] in started)]
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
                    if rc != 0 and _STOP.stopping:  # not a failure: reported once, below
                        code = code or EXIT_PREEMPTED
                    elif rc != 0 and code == 0:
                        code = rc
                        print(f"lt-ssl: stage {name} failed (exit {code}); fix the cause and rerun the same command "
                              f"with --run {run_uri} to resume", file=sys.stderr)
                    left[name] -= 1
                    if left[name] == 0 and rc == 0:
                        finished.add(name)
        if _STOP.stopping and (code != 0 or waiting or ready):
            print(f"lt-ssl: {_STOP.signal_name}: stopped, each training stage at a checkpoint; rerun the same command with "
                  f"--run {run_uri} to resume", file=sys.stderr)
            return EXIT_PREEMPTED
        if code != 0:
            return code
    metrics = store.read_json("evaluate/metrics.json")
    print(results_table(metrics["models"]))
    print(f"\nrun folder: {run_uri}\nreport: {run_uri}/evaluate/report.md")
    return 0
