"""Wall time per stage of a local run (the quickstart by default) and the share of it that is not compute, as JSON.

Runs `lt-ssl run --config CONFIG --run RUN` (stages side by side as the runner schedules them; LT_SSL_THREADS=1
runs them one at a time) -- or, with --from-run, reads a finished run -- and splits each stage's wall time,
from its _SUCCESS.json timestamps, into:

- start: from the moment the stage could start (the stages it needs had ended and a worker was free; the
  runner's launch for a stage that needs none) to its body starting -- process start, imports, the runner,
  reading the config and checking the needs;
- body outside training: the stage body minus its training loop -- loading data, building models, writing
  model.pt and the other outputs, plots, evaluation for the stages without a training loop;
- loop outside steps: the training loop minus its steps (train.seconds - train.step_seconds) --
  checkpoint writes, metrics pushes, the progress line, the epoch's shuffle;
- steps: augmentation, forward, backward, optimizer update (train.step_seconds).

non_compute = start + body outside training + loop outside steps for a training stage; for a stage
without a training loop its body counts as compute and non_compute = start. Issue 11 calls non-compute
work above 5% of a stage a bug. Also writes a torch.profiler trace (Chrome trace JSON, open it in
chrome://tracing or https://ui.perfetto.dev) of --trace-steps training steps of the config's pretrain stage.

Usage: python benchmarks/pipeline.py [--config configs/quickstart.yaml] [--run URI | --from-run URI]
                                     [--trace FILE] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lt_ssl.config import load_config
from lt_ssl.optim import build_optimizer, scaled_lr
from lt_ssl.pipeline.contract import plan_of, read_config
from lt_ssl.pipeline.stages import new_method, ssl_step
from lt_ssl.store import open_store
from lt_ssl.train import bf16_native, step_autocast

RESULTS = Path(__file__).resolve().parent / "results"


def _time(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp).timestamp()


def stage_table(run_uri: str, launched: float | None, exited: float | None) -> dict:
    """Per-stage split of a finished run's wall time, stages in the order they started."""
    store = open_store(run_uri)
    keys = [k for k in store.list("") if k.endswith("_SUCCESS.json")]
    done = sorted((store.read_json(k) | {"stage": k.rsplit("/", 1)[0]} for k in keys), key=lambda s: s["started"])
    if not done:
        raise SystemExit(f"{run_uri} holds no finished stage (_SUCCESS.json); run it first")
    plan = plan_of(read_config(store))
    ended: dict[str, float] = {}  # stage name -> when its last task finished
    for s in done:
        name = s["stage"].split("/")[0]
        ended[name] = max(ended.get(name, 0.0), _time(s["finished"]))
    rows = []
    for s in done:
        started = _time(s["started"])
        train = (s.get("summary") or {}).get("train") or {}
        needs = plan.stage(s["stage"].split("/")[0]).needs
        # When the runner could start it: its needs done and a worker free (the last stage to end before it began).
        freed = [_time(o["finished"]) for o in done if _time(o["finished"]) <= started]
        ready = max([ended[n] for n in needs] + freed[-1:]) if needs else launched
        start = None if ready is None else started - ready
        body = s["seconds"]
        row = {"stage": s["stage"], "wall_s": None if start is None else round(start + body, 2),
               "start_s": None if start is None else round(start, 2), "body_s": round(body, 2)}
        if "seconds" in train:
            row["train_s"] = train["seconds"]
            row["body_outside_training_s"] = round(body - train["seconds"], 2)
            if "step_seconds" in train:
                row["steps_s"] = train["step_seconds"]
                row["loop_outside_steps_s"] = round(train["seconds"] - train["step_seconds"], 2)
        if start is not None and ("steps_s" in row or "train_s" not in row):
            compute = row.get("steps_s", body)
            row["non_compute_s"] = round(start + body - compute, 2)
            row["non_compute_share"] = round(row["non_compute_s"] / (start + body), 3)
        rows.append(row)
    out: dict = {"stages": rows}
    if launched is not None and exited is not None:
        out["total_wall_s"] = round(exited - launched, 2)
        out["after_last_stage_s"] = round(exited - max(ended.values()), 2)  # the results table, process exit
        known = [r for r in rows if "non_compute_s" in r]
        if len(known) == len(rows):  # shares of the stages' summed wall time: stages side by side overlap
            non = sum(r["non_compute_s"] for r in rows) + out["after_last_stage_s"]
            out["total_non_compute_s"] = round(non, 2)
            out["total_non_compute_share"] = round(non / (sum(r["wall_s"] for r in rows) + out["after_last_stage_s"]), 3)
    return out


def profile_step(config: str, overrides: list[str], steps: int, trace: Path) -> dict:
    """torch.profiler over `steps` pretrain steps of the config (random images of its size) -> Chrome trace + top ops."""
    from torch.profiler import ProfilerActivity, profile

    cfg = load_config(config, overrides)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
    torch.manual_seed(0)
    model = new_method(cfg, cfg.method, device).train()
    batch, side = cfg.pretrain.batch_size, cfg.data.image_size
    opt = build_optimizer(cfg.pretrain.optimizer, model.param_groups(cfg.pretrain.lr),
                          lr=scaled_lr(cfg.pretrain.lr, batch), momentum=cfg.pretrain.momentum,
                          weight_decay=cfg.pretrain.weight_decay)
    images = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images = images.to(device)
    idx = torch.arange(batch, device=device)
    step_fn = ssl_step(model, cfg, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

    def one(k: int) -> None:  # the body of lt_ssl.train.train's step
        gen = torch.Generator(device=device).manual_seed(k)
        with step_autocast(device):
            loss = step_fn(images, idx, gen, 0, k, steps)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()

    for k in range(3):  # warm-up: first calls allocate and pick kernels
        one(k)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for k in range(steps):
            one(k)
    trace.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(trace))
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    return {"trace": str(trace), "steps": steps, "batch_size": batch, "image_size": side, "device": str(device),
            "bf16_autocast": bf16_native(device), "self_cpu_ms_per_step": round(total / 1000 / steps, 2),
            "top_ops": [{"op": e.key, "calls_per_step": e.count // steps,
                         "self_cpu_share": round(e.self_cpu_time_total / total, 3)} for e in ops[:12]]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, as `lt-ssl run` takes them")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--run", help="run folder for the new run (default: a fresh temporary folder)")
    where.add_argument("--from-run", help="read this finished run instead of running one (no start time for its "
                                          "first stage, no total)")
    parser.add_argument("--trace", type=Path, default=RESULTS / "train_step_trace.json")
    parser.add_argument("--trace-steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    report: dict = {"command": " ".join(["benchmarks/pipeline.py", *(argv if argv is not None else sys.argv[1:])]),
                    "config": args.config, "overrides": args.overrides,
                    "threads": os.environ.get("LT_SSL_THREADS") or os.cpu_count(), "cpu_count": os.cpu_count(),
                    "load_average_1min_before": round(os.getloadavg()[0], 2)}
    if args.from_run:
        report["run"] = args.from_run
        report |= stage_table(args.from_run, None, None)
    else:
        run_uri = args.run or Path(tempfile.mkdtemp(prefix="lt-ssl-pipeline-")).as_uri()
        cmd = [sys.executable, "-m", "lt_ssl", "run", "--config", args.config, "--run", run_uri, *args.overrides]
        launched = time.time()
        subprocess.run(cmd, check=True, stdout=sys.stderr)  # the results table goes to stderr, JSON to stdout
        exited = time.time()
        report["run"] = run_uri
        report |= stage_table(run_uri, launched, exited)
    report["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    report["profile"] = profile_step(args.config, args.overrides, args.trace_steps, args.trace)
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
