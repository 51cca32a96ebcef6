"""The GPU check: SimSiam ResNet-18 throughput, achieved TFLOP/s, peak memory, k-means, one epoch per training stage.

On a CUDA device (about 5 minutes on one H100/H200; benchmarks/gpu.sh runs it): batch 512 at 32 px, bf16
autocast + channels_last, eager and torch.compile; CIFAR-10-LT-shaped data (12,406 random uint8 images of
3x32x32). Without CUDA it is a smoke run of the same code paths (16 px, batch 8, one step, no compile) that
writes the same JSON keys with "device": "cpu"; its figures say nothing about speed.

Usage: python benchmarks/gpu.py [OUT.json]   (default benchmarks/results/gpu.json)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/kmeans.py, when run as a script

from kmeans import gaussian_mixture  # noqa: E402

from lt_ssl.cluster import kmeans  # noqa: E402
from lt_ssl.config import AugmentConfig, Config, TrainConfig  # noqa: E402
from lt_ssl.data.augment import augment_batch  # noqa: E402
from lt_ssl.methods import METHODS, Batch, DistillStudent, build  # noqa: E402
from lt_ssl.models import build_backbone  # noqa: E402
from lt_ssl.pipeline.stages import _teacher_targets, device_name, ssl_step  # noqa: E402
from lt_ssl.store.local import LocalStore  # noqa: E402
from lt_ssl.train import Checkpointer, train  # noqa: E402

CIFAR10_LT_IMAGES = 12_406  # CIFAR-10 with imbalance 100: 5000 * 100**(-c/9) images of class c, summed
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
# Dense bf16 tensor-core peak, TFLOP/s, from the vendors' data sheets; matched against the device name in order.
PEAK_BF16_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0))
REFERENCE_FLOP_PER_IMAGE = 6.7e9  # ResNet-18 CIFAR at 32 px: ~1.1 GFLOP forward per view, x3 for fwd+bwd, x2 views


@dataclass(frozen=True)
class Sizes:
    """What one run measures: the GPU sizes, or the CPU smoke sizes that exercise the same paths."""

    batch: int
    image: int
    warmup: int
    steps: int
    epoch_images: int
    kmeans_n: int
    kmeans_dim: int
    compile: bool


GPU = Sizes(batch=512, image=32, warmup=10, steps=50, epoch_images=CIFAR10_LT_IMAGES, kmeans_n=50_000,
            kmeans_dim=512, compile=True)
SMOKE = Sizes(batch=8, image=16, warmup=0, steps=1, epoch_images=8, kmeans_n=2000, kmeans_dim=64, compile=False)


def build_simsiam(device: torch.device) -> nn.Module:
    """SimSiam on resnet18_cifar with the method's defaults, in channels_last on CUDA (as the stages build it).

    The one place that knows how a method is constructed: adapt it here when the method interface changes.
    """
    model = build(build_backbone("resnet18_cifar"), METHODS["simsiam"].Config()).to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def ssl_loss(loss_fn: Callable[[Batch], dict], x1: Tensor, x2: Tensor) -> Tensor:
    """The method's training loss (`model.loss`, or its compiled form) for two views (B, 3, S, S); the other place
    to adapt with the interface."""
    idx = torch.arange(x1.shape[0], device=x1.device)
    return loss_fn(Batch([x1, x2], idx, epoch=0, step=0, total_steps=1))["loss"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device):
    # bf16 on CUDA as the training loop does; on CPU the loop runs float32, and so does the smoke run.
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


def random_images(n: int, side: int, device: torch.device, seed: int) -> Tensor:
    """(n, 3, side, side) uint8, device-resident as the stages keep the dataset."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=gen).to(device)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def views(x: Tensor, aug: AugmentConfig, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    x1, x2 = augment_batch(x, aug, MEAN, STD, generator=gen), augment_batch(x, aug, MEAN, STD, generator=gen)
    if x.device.type == "cuda":
        x1, x2 = x1.contiguous(memory_format=torch.channels_last), x2.contiguous(memory_format=torch.channels_last)
    return x1, x2


def flop_per_image(device: torch.device, image: int) -> float:
    """Forward + backward FLOP of the SimSiam step for one image (both views), counted by torch on 4 images."""
    model = build_simsiam(device)
    x1 = torch.randn(4, 3, image, image, device=device)
    with FlopCounterMode(display=False) as counter:
        ssl_loss(model.loss, x1, x1.clone()).backward()
    return counter.get_total_flops() / 4


def throughput(device: torch.device, sizes: Sizes, aug: AugmentConfig, compiled: bool) -> dict:
    """Images/s of the SGD step at sizes.batch: on fixed views (the model alone) and with augmentation per step."""
    torch.manual_seed(0)
    model = build_simsiam(device)
    # The step calls model.loss, not forward: torch.compile(model) would compile forward alone and leave the step eager.
    loss_fn = torch.compile(model.loss) if compiled else model.loss
    opt = torch.optim.SGD(model.parameters(), lr=0.05 * sizes.batch / 256, momentum=0.9, weight_decay=1e-5)
    images = random_images(sizes.batch, 32, device, seed=1)
    gen = torch.Generator(device=device).manual_seed(0)
    fixed = views(images, aug, gen)

    def step(x1: Tensor, x2: Tensor) -> None:
        with autocast(device):
            loss = ssl_loss(loss_fn, x1, x2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def timed(run: Callable[[], None]) -> float:
        for _ in range(sizes.warmup):
            run()
        sync(device)
        start = time.perf_counter()
        for _ in range(sizes.steps):
            run()
        sync(device)
        return (time.perf_counter() - start) / sizes.steps

    t_compile = time.perf_counter()
    step(*fixed)  # the first call compiles when compiled; timed apart from the steady state
    sync(device)
    first_step_s = time.perf_counter() - t_compile
    model_s = timed(lambda: step(*fixed))
    full_s = timed(lambda: step(*views(images, aug, gen)))
    return {
        "first_step_s": round(first_step_s, 3),
        "step_ms": round(model_s * 1e3, 3),
        "images_per_s": round(sizes.batch / model_s, 1),
        "step_with_augment_ms": round(full_s * 1e3, 3),
        "images_per_s_with_augment": round(sizes.batch / full_s, 1),
    }


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def kmeans_times(device: torch.device, sizes: Sizes) -> dict:
    """Seconds of lt_ssl's torch k-means (cluster.n_init / max_iter defaults) on features resident on the device."""
    feats = gaussian_mixture(sizes.kmeans_n, sizes.kmeans_dim, components=32, seed=0).to(device)
    kmeans(feats[:1000], 4, backend="torch")  # warm-up: kernels, allocator
    out: dict = {"n": sizes.kmeans_n, "dim": sizes.kmeans_dim}
    for k in (10, 64):
        sync(device)
        start = time.perf_counter()
        result = kmeans(feats, k, backend="torch", seed=0)
        sync(device)
        out[f"k{k}_s"] = round(time.perf_counter() - start, 3)
        out[f"k{k}_inertia"] = round(result.inertia, 3)
    return out


def stage_epochs(device: torch.device, sizes: Sizes, workdir: Path) -> dict:
    """One epoch of each training stage through lt_ssl.train.train (checkpoint write included), on random data.

    pretrain and baseline run the same SimSiam step on all images; an expert runs it on its cluster's images
    (here 1/k of them, k = cluster.k's default); distill trains the K+1-head student against the base model
    and each image's expert (teachers with random weights: the cost does not depend on them).
    """
    cfg = Config(backbone="resnet18_cifar", augment=AugmentConfig(size=sizes.image))
    tcfg = TrainConfig(epochs=1, batch_size=sizes.batch, checkpoint_every=1)
    store = LocalStore(workdir)
    images = random_images(sizes.epoch_images, 32, device, seed=2)
    k = cfg.cluster.k
    out = {}

    def run(name: str, model: nn.Module, x: Tensor, step) -> None:
        ckpt = Checkpointer(store, name, f"bench/{name}")
        sync(device)
        start = time.perf_counter()
        result = train(model, model.param_groups(tcfg.lr), x, step, tcfg, ckpt, seed=0, name=name)
        sync(device)
        out[name] = {"images": x.shape[0], "steps": result.steps, "seconds": round(time.perf_counter() - start, 3),
                     "images_per_s": round(result.images_per_second, 1)}

    torch.manual_seed(0)
    model = build_simsiam(device)
    run("pretrain", model, images, ssl_step(model, cfg, MEAN, STD))
    expert = build_simsiam(device)
    expert_images = images[: max(sizes.batch, images.shape[0] // k)]
    run("expert", expert, expert_images, ssl_step(expert, cfg, MEAN, STD))

    base = build_simsiam(device).backbone.eval().requires_grad_(False)
    experts = [build_simsiam(device).backbone.eval().requires_grad_(False) for _ in range(k)]
    student = DistillStudent(build_simsiam(device).backbone, k + 1, base.out_dim, cfg.distill.head_hidden).to(device)
    assignments = torch.randint(0, k, (images.shape[0],), generator=torch.Generator().manual_seed(3)).to(device)

    def distill_step(x: Tensor, idx: Tensor, gen: torch.Generator, epoch: int, global_step: int, total: int) -> dict:
        # As the distill stage's step: one view, base targets for all, each image's own expert's targets.
        view = augment_batch(x, cfg.augment, MEAN, STD, generator=gen)
        cid = assignments[idx]
        t_base = _teacher_targets(base, view)
        t_exp = torch.empty_like(t_base)
        for c, teacher in enumerate(experts):
            mask = cid == c
            if mask.any():
                t_exp[mask] = _teacher_targets(teacher, view[mask])
        return {"loss": student.loss(view, cid, t_base, t_exp)}

    run("distill", student, images, distill_step)
    return out


def peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 1 if platform.system() == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "process max RSS"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default="benchmarks/results/gpu.json")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = GPU if device.type == "cuda" else SMOKE
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    aug = AugmentConfig(size=sizes.image)

    flop = flop_per_image(device, sizes.image)
    runs = {"eager": throughput(device, sizes, aug, compiled=False)}
    runs["compile"] = (throughput(device, sizes, aug, compiled=True) if sizes.compile
                       else {"skipped": "CPU smoke run: torch.compile is measured on CUDA only"})
    peak = peak_tflops(device)
    achieved = {name: round(r["images_per_s"] * flop / 1e12, 2) for name, r in runs.items() if "images_per_s" in r}
    memory, memory_kind = peak_memory(device)
    # The stage epochs run as the pipeline's stages do: lt_ssl never turns cudnn.benchmark on. Distill feeds each
    # expert the images of its cluster, a batch whose size changes every step; with benchmark on (the throughput
    # runs' setting, for fixed shapes) the H200 ran distill at 627 img/s against pretrain's 9,270 in session 6.
    torch.backends.cudnn.benchmark = False
    with tempfile.TemporaryDirectory() as tmp:
        epochs = stage_epochs(device, sizes, Path(tmp))
    report = {
        "device": device.type,
        "device_name": device_name(device),  # as each stage's _SUCCESS.json names it
        "smoke": device.type != "cuda",
        "batch_size": sizes.batch,
        "image_size": sizes.image,
        "precision": "bf16 autocast, channels_last" if device.type == "cuda" else "float32",
        "cudnn_benchmark": {"throughput": device.type == "cuda", "epochs": False},
        "throughput": runs,
        "flop_per_image": round(flop),
        "flop_per_image_reference": REFERENCE_FLOP_PER_IMAGE,
        "achieved_tflops": achieved,
        "peak_tflops": peak,
        "fraction_of_peak": {name: (round(v / peak, 4) if peak else None) for name, v in achieved.items()},
        "peak_memory_bytes": memory,
        "peak_memory_kind": memory_kind,
        "kmeans": kmeans_times(device, sizes),
        "epochs": epochs,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "seconds_total": round(time.perf_counter() - start, 1),
    }
    assert all(math.isfinite(r["images_per_s"]) for r in runs.values() if "images_per_s" in r)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
