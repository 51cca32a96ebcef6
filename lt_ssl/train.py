"""The one training loop: deterministic data order, cosine lr, checkpoints, resume, SIGTERM or Ctrl-C, collapse."""

from __future__ import annotations

import contextlib
import io
import os
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from .config import TrainConfig
from .errors import CheckpointError, CollapseError, Preempted
from .signals import StopRequest
from .optim import build_optimizer, cosine_lr, scaled_lr
from .progress import Progress
from .store import Store

# A step's loss function: (images uint8 (B,3,H,W) on device, batch indices (B,), generator, epoch, global step,
# total steps) -> {"loss": scalar, optional "z_std": detached scalar}.
StepFn = Callable[[Tensor, Tensor, torch.Generator, int, int, int], dict]


def step_seed(seed: int, epoch: int, step: int) -> int:
    """Every random draw is keyed by (seed, epoch, step), so a resumed run replays the same stream."""
    return (seed * 1_000_003 + epoch * 10_007 + step) % (2**63 - 1)


class Checkpointer:
    """Checkpoints under `<stage>/ckpt/` in the run store; the newest complete one wins."""

    keep = 2

    def __init__(self, store: Store, prefix: str, arch: str):
        self.store, self.prefix, self.arch = store, f"{prefix}/ckpt", arch

    def _keys(self) -> list[str]:
        return sorted(k for k in self.store.list(self.prefix) if k.endswith(".pt"))

    def save(self, state: dict) -> None:
        buf = io.BytesIO()
        torch.save({**state, "arch": self.arch}, buf)
        self.store.write_bytes(f"{self.prefix}/step-{state['global_step']:09d}.pt", buf.getvalue())
        for old in self._keys()[: -self.keep]:  # only after the new one is complete
            self.store.delete(old)

    def load_latest(self) -> dict | None:
        keys = self._keys()
        if not keys:
            return None
        return load_checkpoint(self.store, keys[-1], self.arch)


def load_checkpoint(store: Store, key: str, arch: str) -> dict:
    """torch.load with weights_only=True: a checkpoint cannot run code; arch must match."""
    try:
        state = torch.load(io.BytesIO(store.read_bytes(key)), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling/format failure means "not a checkpoint"
        raise CheckpointError(f"{store.url(key)} is not a readable checkpoint ({type(e).__name__}); delete it and rerun the stage") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{store.url(key)} is not an lt-ssl checkpoint; delete it and rerun the stage")
    if state.get("arch") != arch:
        raise CheckpointError(f"{store.url(key)} holds a {state.get('arch')!r} model, this stage builds {arch!r}; use a new run")
    return state


def step_autocast(device: torch.device):
    """The context a training step runs in: bf16 autocast where bf16 is native (bf16_native), else none."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16_native(device) else contextlib.nullcontext()


CPU_BF16_ENV = "LT_SSL_CPU_BF16"  # "1": bf16 autocast on CPUs with native bf16 too (opt-in, see bf16_native)


def bf16_native(device: torch.device) -> bool:
    """Whether training steps run under bf16 autocast: on CUDA always; on a CPU only with LT_SSL_CPU_BF16=1 and
    native bf16 (AVX512-BF16 or AMX; elsewhere oneDNN would emulate it).

    Why opt-in on CPU: a CPU run's numbers would otherwise depend on which CPU it ran on (the same config gives
    other accuracies, other k-means ids, on a machine with and without native bf16), and the committed
    baselines and tables are float32. Measured with benchmarks/train_step.py (benchmarks/README.md): SimSiam
    training 1.46x (small CNN, 16 px) to 1.95x (ResNet-18, 32 px) faster on an AVX512-BF16 CPU; quickstart
    accuracies no lower than float32's (one run each). Losses compute in float32 (losses.py); augment_batch
    always runs in float32. Like `device`, it is a runtime choice, not part of a run's config_hash.
    """
    if device.type == "cuda":
        return True
    if os.environ.get(CPU_BF16_ENV) != "1":
        return False
    try:
        return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


# Steps between the host's reads of the device on CUDA (see train); a NaN loss is reported at its own step all the same.
SYNC_EVERY_CUDA = 20


@dataclass
class TrainResult:
    epochs: int
    steps: int
    seconds: float
    final_loss: float | None
    images_per_second: float
    step_seconds: float  # of `seconds`, the steps themselves (augment, forward, backward, update); the rest is the loop's


def train(
    model: nn.Module,
    param_groups: list[dict],
    images: Tensor,
    step_fn: StepFn,
    cfg: TrainConfig,
    ckpt: Checkpointer,
    *,
    seed: int,
    name: str,
    metrics=None,
    collapse_std: float = 0.0,
    after_step: Callable[[], None] | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    epoch_order: Callable[[int, torch.Generator], Tensor] | None = None,
    sync_every: int | None = None,
) -> TrainResult:
    """Train `model` on `images` (N,3,H,W) uint8 (on the training device) for cfg.epochs.

    The loss comes from `step_fn`; `param_groups` may mark groups `fix_lr` (kept at their lr).
    `collapse_std`: if an epoch's mean `z_std` falls below it, raise CollapseError.
    `after_step()` runs after each optimizer step, `on_epoch_end(epoch)` after each epoch (a method's hooks).
    `epoch_order(n, generator)`: each epoch's visiting order of the n images (default a uniform shuffle); the
    generator is keyed by (seed, epoch), so a resumed epoch replays the same order.
    `sync_every`: steps between the host's reads of the device (default: SYNC_EVERY_CUDA on CUDA, else 1).
    """
    device = images.device
    n = images.shape[0]
    batch_size = min(cfg.batch_size, n)
    steps_per_epoch = n // batch_size  # drop the ragged last batch: BatchNorm needs full-ish batches
    total_steps = cfg.epochs * steps_per_epoch
    base_lr = scaled_lr(cfg.lr, batch_size)
    for g in param_groups:
        g["lr"] = base_lr
    opt = build_optimizer(cfg.optimizer, param_groups, lr=base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    epoch, step = 0, 0  # position of the next step to run
    state = ckpt.load_latest()
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            detail = " ".join(str(e).split())[:300]  # torch puts the useful part (which keys/shapes) after the first line
            raise CheckpointError(f"checkpoint for {name} does not fit this model ({detail}); use a new run") from None
        epoch, step = state["epoch"], state["step"]
        print(f"[{name}] resuming from epoch {epoch} step {step}", file=sys.stderr)

    autocast = step_autocast(device)
    model.train()

    def snapshot(e: int, s: int) -> dict:
        return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": e, "step": s,
                "global_step": e * steps_per_epoch + s}

    # On CUDA the host reads the device (the loss check, progress, metrics) once per window of steps, so it queues
    # the next steps while the GPU runs; on a CPU every step is already synchronous and the window is one step.
    sync_every = sync_every or (SYNC_EVERY_CUDA if device.type == "cuda" else 1)
    t_start, seen, last_loss, step_seconds = time.perf_counter(), 0, float("nan"), 0.0
    bar = Progress(total_steps * batch_size, name, start=(epoch * steps_per_epoch + step) * batch_size)
    with StopRequest() as stop, bar:
        while epoch < cfg.epochs:
            order_gen = torch.Generator().manual_seed(step_seed(seed, epoch, -1))
            order = epoch_order(n, order_gen) if epoch_order is not None else torch.randperm(n, generator=order_gen)
            order = order.to(device)  # one copy an epoch, not one a step
            z_sum, z_count = torch.zeros((), device=device), 0
            window: list[Tensor] = []  # the losses of the steps since the last sync
            t0 = time.perf_counter()
            while step < steps_per_epoch:
                idx = order[step * batch_size:(step + 1) * batch_size]
                gen = torch.Generator(device=device).manual_seed(step_seed(seed, epoch, step))
                global_step = epoch * steps_per_epoch + step
                lr = cosine_lr(global_step, total_steps, cfg.warmup_epochs * steps_per_epoch, base_lr)
                for g in opt.param_groups:
                    g["lr"] = base_lr if g.get("fix_lr") else lr
                with autocast:
                    out = step_fn(images[idx], idx, gen, epoch, global_step, total_steps)
                loss = out["loss"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if after_step is not None:
                    after_step()
                window.append(loss.detach())
                if "z_std" in out:
                    z_sum, z_count = z_sum + out["z_std"], z_count + 1
                step += 1
                if len(window) < sync_every and step < steps_per_epoch and not stop.requested:
                    continue
                losses = torch.stack(window).float().cpu()  # waits for the device: the window's compute ends here
                step_seconds += time.perf_counter() - t0
                finite = torch.isfinite(losses)
                if not finite.all():  # raised before any checkpoint of these weights is written
                    first = int((~finite).nonzero()[0, 0])
                    raise CollapseError(f"{name}: loss became {losses[first].item()} at epoch {epoch} step "
                                        f"{step - len(window) + first}; lower the learning rate")
                last_loss = losses[-1].item()
                seen += batch_size * len(window)
                bar.update(batch_size * len(window), f"epoch {epoch + 1}/{cfg.epochs} loss {last_loss:.4f}")
                ips = batch_size * len(window) / max(time.perf_counter() - t0, 1e-9)
                if metrics is not None:
                    metrics.progress(epoch=epoch, step=global_step, loss=last_loss, images_per_second=ips, lr=lr)
                if stop.requested:  # SIGTERM (eviction, `kill`) or Ctrl-C: keep the work done, exit 75
                    ckpt.save(snapshot(epoch, step))
                    raise Preempted(f"{name}: {stop.name} received; checkpoint written at epoch {epoch} step {step}; "
                                    "rerun to resume")
                window = []
                t0 = time.perf_counter()
            elapsed = time.perf_counter() - t_start
            if not bar.enabled:  # on a terminal the progress line shows this
                print(f"[{name}] epoch {epoch + 1}/{cfg.epochs} loss {last_loss:.4f} "
                      f"{seen / max(elapsed, 1e-9):.0f} img/s lr {lr:.4g}", file=sys.stderr, flush=True)
            if on_epoch_end is not None:
                on_epoch_end(epoch)
            z_mean = (z_sum / z_count).item() if z_count else None
            if z_mean is not None and collapse_std > 0 and z_mean < collapse_std:
                raise CollapseError(
                    f"{name}: representations collapsed at epoch {epoch + 1} (std of normalised outputs "
                    f"{z_mean:.2e} < {collapse_std:.2e}); lower the learning rate or raise weight decay")
            epoch, step = epoch + 1, 0
            if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
                ckpt.save(snapshot(epoch, 0))
    elapsed = time.perf_counter() - t_start
    # None, not NaN, when no step ran here (0 epochs, or resumed after the last one): _SUCCESS.json stays strict JSON.
    final = None if math.isnan(last_loss) else last_loss
    return TrainResult(cfg.epochs, total_steps, elapsed, final, seen / max(elapsed, 1e-9), step_seconds)

