"""Operators dispatched and host syncs per training step, per method of an experiment grid, printed as JSON.

On a GPU a step of the experiments' small models is bound by kernel launches, not arithmetic: each operator that
computes is one launch or more, and a host sync (`.item()`, `int(t)`, `.tolist()` of a CUDA tensor) stops the
host from queueing ahead. Counting both on the CPU predicts which methods a GPU will run slower than their base,
without a GPU. Counted: every ATen operator that is not a view (a view launches nothing), under a dispatch mode,
for one step of the stages' own path (`ssl_step`: augmentation, forward, loss; then backward, the configured
optimizer and the method's after_step hook), in bf16 autocast as the CUDA loop runs it, with the augmentation's
CUDA path (augment.SYNC_FREE_DEVICES: BCL's extra ops without host syncs). The optimizer runs its
`foreach` implementation, torch's default for CUDA parameters (its CPU default loops over the parameters). Syncs:
scalar reads (`_local_scalar_dense`) and `tolist` calls, outside the optimizer, whose scalar reads are of its
step counters, which torch keeps on the host for CUDA parameters too. Each variant's split-0 cell of the grid
gives the config, so the counts are for the configs the results tables ran; the step runs after three warm-up
epochs, so methods whose state starts in the first epoch (BCL's strengths) are counted in their steady state.

With `--time DEVICE` it also times the same steps on that device (the variants alternating round by round, in
the training loop's precision) and gives each variant's images/s and its rate as a ratio to the reference's: the
check, on a GPU, of what the counts predict.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/ops_per_step.py [--experiment experiments/methods_p100.yaml]
    python3 benchmarks/ops_per_step.py --time cuda            # on a device machine (benchmarks/device_check.sh)
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import statistics
import time
from collections.abc import Callable, Sequence
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lt_ssl.config import load_config
from lt_ssl.data import augment
from lt_ssl.experiment import load_experiment
from lt_ssl.optim import build_optimizer
from lt_ssl.pipeline.stages import device_name, new_method, ssl_step
from lt_ssl.train import bf16_native

SYNCS = {"aten._local_scalar_dense"}  # what .item(), int(t), float(t) and bool(t) of a tensor dispatch


class OpCounter(TorchDispatchMode):
    """Counts the non-view ATen operators dispatched inside it, by name, and the host syncs among them."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name in SYNCS:
            self.syncs += 1
        elif not func.is_view:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


class TolistCounter:
    """Counts Tensor.tolist calls (a sync on CUDA, invisible to the dispatcher: it reads the data directly)."""

    def __enter__(self) -> TolistCounter:
        self.calls, self._tolist = 0, torch.Tensor.tolist

        def counted(t, *args, **kwargs):
            self.calls += 1
            return self._tolist(t, *args, **kwargs)

        torch.Tensor.tolist = counted
        return self

    def __exit__(self, *exc) -> None:
        torch.Tensor.tolist = self._tolist


def steady_step(overrides: Sequence[str], config: str, batch: int | None, device: torch.device, bf16: bool,
                warmup_epochs: int = 3) -> tuple[Callable[[dict | None], None], dict]:
    """A steady-state training step of the config's method (pretrain settings) on `device`, after warm-up epochs,
    as a function of the part counters (None: just run it); and the row's description. bf16: under bf16 autocast."""
    cfg = load_config(config, list(overrides))
    torch.manual_seed(0)
    model = new_method(cfg, cfg.method, device).train()
    t = cfg.pretrain
    opt = build_optimizer(t.optimizer, model.param_groups(t.lr), t.lr, t.momentum, t.weight_decay)
    for group in opt.param_groups:
        group["foreach"] = True  # as torch chooses for CUDA parameters
    b = batch or t.batch_size
    images = torch.randint(0, 256, (b, 3, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images, idx = images.to(device), torch.arange(b, device=device)
    step = ssl_step(model, cfg, [0.5] * 3, [0.25] * 3)
    gen = torch.Generator(device).manual_seed(0)
    model.on_train_start(b)
    epoch = 0

    def one(counters: dict[str, OpCounter] | None = None) -> None:
        def part(name: str):
            return counters[name] if counters else contextlib.nullcontext()

        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            with part("augment_forward_loss"):
                loss = step(images, idx, gen, epoch, epoch, warmup_epochs + 1)["loss"]
        with part("backward"):
            loss.backward()
        with part("optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)
        with part("after_step"):
            model.after_step()

    for epoch in range(warmup_epochs):
        one()
        model.on_epoch_end(epoch)
    epoch = warmup_epochs
    return one, {"method": cfg.method.name, "backbone": cfg.backbone, "batch": b}


def count_step(overrides: Sequence[str], config: str, batch: int | None) -> dict:
    """Operators and host syncs of one steady-state step, counted on the CPU along the CUDA code path."""
    one, row = steady_step(overrides, config, batch, torch.device("cpu"), bf16=True)  # bf16: as on CUDA
    counters = {name: OpCounter() for name in ("augment_forward_loss", "backward", "optimizer", "after_step")}
    cuda_path = mock.patch.object(augment, "SYNC_FREE_DEVICES", (*augment.SYNC_FREE_DEVICES, "cpu"))
    with TolistCounter() as tolist, cuda_path:
        one(counters)
    parts = {name: sum(c.ops.values()) for name, c in counters.items()}
    top = sum((c.ops for c in counters.values()), collections.Counter()).most_common(5)
    return {**row, "ops": sum(parts.values()), **parts,
            "host_syncs": sum(c.syncs for n, c in counters.items() if n != "optimizer") + tolist.calls, "top_ops": top}


def time_steps(steps: dict[str, Callable], device: torch.device, n: int, rounds: int) -> dict[str, float]:
    """Seconds a step per variant: `n` steps a round, the variants alternating round by round; medians of rounds."""
    def synced() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, one in steps.items():
            start = synced()
            for _ in range(n):
                one()
            seconds[name].append(synced() - start)
    return {name: statistics.median(s) / n for name, s in seconds.items()}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="experiments/methods_p100.yaml")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default: the config's)")
    parser.add_argument("--variants", nargs="*", default=None, help="only these variants (default: all)")
    parser.add_argument("--reference", default="SimCLR", help="the variant the ratios are taken against")
    parser.add_argument("--time", metavar="DEVICE", default=None,
                        help="also time the steps on this device (cpu, cuda), in the training loop's precision")
    parser.add_argument("--steps", type=int, default=20, help="timed steps a round (with --time)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds (with --time)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    exp = load_experiment(args.experiment)
    first = {}  # each variant's first cell: the grid's own overrides for that method
    for cell in exp.cells:
        if not cell.pending and exp.variants[cell.variant].source is None:
            first.setdefault(cell.variant, cell)
    names = [v for v in first if args.variants is None or v in args.variants or v == args.reference]
    rows = {v: count_step(first[v].overrides, exp.config, args.batch) for v in names}
    ref = rows.get(args.reference)
    for row in rows.values():
        row["ops_vs_reference"] = round(row["ops"] / ref["ops"], 2) if ref else None
    report = {"experiment": exp.path, "reference": args.reference, "torch": torch.__version__, "variants": rows}
    if args.time:
        device = torch.device(args.time)
        steps = {v: steady_step(first[v].overrides, exp.config, args.batch, device, bf16_native(device))[0]
                 for v in names}
        per_step = time_steps(steps, device, args.steps, args.rounds)
        for v, row in rows.items():
            row["images_per_s"] = round(row["batch"] / per_step[v], 1)
            row["rate_vs_reference"] = round(per_step[args.reference] / per_step[v], 2) if ref else None
        report["timed"] = {"device": device_name(device), "steps": args.steps, "rounds": args.rounds,
                           "bf16": bf16_native(device)}
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
