"""Self-supervised training throughput: lt_ssl's path against the conventional PIL + DataLoader pipeline, as JSON.

Both sides train SimSiam (same backbone, heads, loss, SGD optimizer, batch size and augmentation recipe,
the SimSiam CIFAR one: random resized crop, flip, colour jitter, grayscale) on the same uint8 images:

- ours: the dataset as one uint8 tensor on the device, two views per step from the batched
  `augment_batch` through the pipeline's own `ssl_step` and `new_method` (so whatever the stages do to the
  model -- memory format, compile -- is measured here too), the project optimizer (`build_optimizer`);
- theirs: what users of lightly, solo-learn or the SimSiam reference code write -- a torch Dataset of PIL
  images whose transform returns two torchvision views per image (the reference's TwoCropsTransform), a
  DataLoader (shuffle, drop_last, num_workers 0 and 1; the worker is persistent, which only helps it)
  feeding a plain eager float32 model.

One round is one epoch of --steps batches (each source image counted once, two views each); the pipelines
run alternately in one process, round after round, so load from other processes hits them alike; the
medians over --repeats rounds are reported with the ratio ours / theirs. `augment_share` is the fraction
of our step time spent in augment_batch, timed inside the same rounds. The DataLoader worker is one more
process: with --threads 1, "theirs, 1 worker" uses two cores against our one.

Usage: python benchmarks/train_step.py [--quick] [--threads 1 2] [--settings small_cnn@16 ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/augment.py, when run as a script

from augment import MEAN, STD, cifar_like, torchvision_pipeline  # noqa: E402

from lt_ssl.config import from_dict  # noqa: E402
from lt_ssl.methods import Batch, build  # noqa: E402
from lt_ssl.models import build_backbone  # noqa: E402
from lt_ssl.optim import build_optimizer, scaled_lr  # noqa: E402
from lt_ssl.pipeline.stages import new_method, ssl_step  # noqa: E402
os.environ.setdefault("LT_SSL_CPU_BF16", "1")  # measure the opt-in CPU bf16 path too (ours_float32 is the default)
from lt_ssl.train import bf16_native, step_autocast  # noqa: E402

# The quickstart's SimSiam heads on the small CNN; SimSiam's CIFAR variant (configs/cifar10_lt.yaml) on ResNet-18.
QUICKSTART_HEADS = {"name": "simsiam", "proj_dim": 512, "proj_hidden": 512, "proj_layers": 2, "pred_hidden": 128}
CIFAR_HEADS = {"name": "simsiam", "proj_dim": 2048, "proj_hidden": 2048, "proj_layers": 2, "pred_hidden": 512}
LR, MOMENTUM, WEIGHT_DECAY = 0.2, 0.9, 5e-4  # the quickstart's pretrain optimizer (lr per 256 images)


@dataclass(frozen=True)
class Setting:
    backbone: str
    size: int  # source images and views are size x size
    heads: dict = field(hash=False)
    steps: int  # batches per round (one epoch)


SETTINGS = {
    "small_cnn@16": Setting("small_cnn", 16, QUICKSTART_HEADS, steps=30),  # the quickstart (digits at 16 px)
    "small_cnn@28": Setting("small_cnn", 28, QUICKSTART_HEADS, steps=20),  # Fashion-MNIST's side
    "resnet18_cifar@32": Setting("resnet18_cifar", 32, CIFAR_HEADS, steps=4),  # CIFAR, where the model dominates
    "vit_tiny@16": Setting("vit_tiny", 16, QUICKSTART_HEADS, steps=10),  # the methods table's MSN/PMSN backbone
}


def config(setting: Setting):
    """The run config both sides share: backbone, SimSiam heads, the CIFAR augmentation recipe at the setting's size."""
    return from_dict({"backbone": setting.backbone, "method": setting.heads, "augment": {"size": setting.size},
                      "device": "cpu"})


def optimizer(model: torch.nn.Module, batch: int) -> torch.optim.Optimizer:
    return build_optimizer("sgd", model.param_groups(LR), lr=scaled_lr(LR, batch), momentum=MOMENTUM,
                           weight_decay=WEIGHT_DECAY)


def sgd_step(opt: torch.optim.Optimizer, loss: Tensor) -> float:
    """As lt_ssl.train.train does after the loss: zero, backward, step, read the loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


class Ours:
    """Device-resident uint8 images, batched augmentation through the stages' ssl_step, the stages' model."""

    def __init__(self, hwc, cfg, batch: int, steps: int, device: torch.device, float32: bool = False,
                 contiguous: bool = False):
        torch.manual_seed(0)
        self.autocast = (lambda: contextlib.nullcontext()) if float32 else (lambda: step_autocast(device))
        self.model = new_method(cfg, cfg.method, device).train()
        if contiguous:  # the weights back in NCHW: the stages' CPU layout before they went channels_last
            self.model = self.model.to(memory_format=torch.contiguous_format)
        self.opt = optimizer(self.model, batch)
        self.images = torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous().to(device)  # (N,3,S,S) uint8
        self.step_fn = ssl_step(self.model, cfg, MEAN, STD)
        self.batch, self.steps, self.device = batch, steps, device
        self.epoch = 0
        self.augment_seconds = 0.0

    def round(self) -> None:
        """One epoch; adds the time spent in augment_batch to self.augment_seconds."""
        order = torch.randperm(self.images.shape[0], generator=torch.Generator().manual_seed(self.epoch))
        self.epoch += 1
        timed = _AugmentTimer(self.device)
        with timed:
            for step in range(self.steps):
                idx = order[step * self.batch:(step + 1) * self.batch].to(self.device)
                gen = torch.Generator(device=self.device).manual_seed(self.epoch * 10_007 + step)
                with self.autocast():  # as lt_ssl.train.train runs the step
                    out = self.step_fn(self.images[idx], idx, gen, self.epoch, step, self.steps)
                sgd_step(self.opt, out["loss"])
        self.augment_seconds = timed.seconds


class _AugmentTimer:
    """Wraps lt_ssl.data.augment.augment_batch where ssl_step looks it up, summing its wall time."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, 0.0

    def __enter__(self):
        import lt_ssl.pipeline.stages as stages

        self._module, self._orig = stages, stages.augment_batch

        def timed(*args, **kwargs):
            _sync(self.device)
            start = time.perf_counter()
            out = self._orig(*args, **kwargs)
            _sync(self.device)
            self.seconds += time.perf_counter() - start
            return out

        stages.augment_batch = timed
        return self

    def __exit__(self, *exc):
        self._module.augment_batch = self._orig


class PilDataset(torch.utils.data.Dataset):
    """The conventional dataset: PIL images, a transform returning two views (SimSiam's TwoCropsTransform)."""

    def __init__(self, hwc, transform):
        self.images = [Image.fromarray(img) for img in hwc]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = self.images[i]
        return self.transform(img), self.transform(img)


class Theirs:
    """A DataLoader over PilDataset with torchvision transforms per image, feeding a plain eager model."""

    def __init__(self, hwc, cfg, batch: int, workers: int):
        torch.manual_seed(0)
        self.model = build(build_backbone(cfg.backbone), cfg.method).train()
        self.opt = optimizer(self.model, batch)
        dataset = PilDataset(hwc, torchvision_pipeline(cfg.augment))
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
            persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))

    def round(self) -> None:
        for step, (x1, x2) in enumerate(self.loader):
            idx = torch.arange(x1.shape[0])
            out = self.model.loss(Batch([x1, x2], idx, 0, step, len(self.loader)))
            sgd_step(self.opt, out["loss"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, setting: Setting, threads: int, batch: int, repeats: int, steps: int | None,
            contiguous: bool = False) -> dict:
    """Alternating rounds of ours and theirs (0 and 1 workers) -> medians, ratios and our augmentation share."""
    torch.set_num_threads(threads)
    steps = steps or setting.steps
    cfg = config(setting)
    hwc = cifar_like(batch * steps, seed=0, side=setting.size)
    device = torch.device("cpu")
    sides = {"ours": Ours(hwc, cfg, batch, steps, device)}
    if bf16_native(device):  # the same path with the step in float32, to show what bf16 autocast gives
        sides["ours_float32"] = Ours(hwc, cfg, batch, steps, device, float32=True)
    if contiguous:  # the stages' CPU default (float32 unless LT_SSL_CPU_BF16) with NCHW weights, the peer of channels_last
        sides["ours_float32_contiguous"] = Ours(hwc, cfg, batch, steps, device, float32=True, contiguous=True)
    sides |= {"theirs_workers0": Theirs(hwc, cfg, batch, workers=0),
              "theirs_workers1": Theirs(hwc, cfg, batch, workers=1)}
    for side in sides.values():  # warm-up: allocator, worker start, first-call overheads
        side.round()
    seconds: dict[str, list[float]] = {k: [] for k in sides}
    shares, loads = [], []
    for _ in range(repeats):
        for key, side in sides.items():
            _sync(device)
            start = time.perf_counter()
            side.round()
            _sync(device)
            seconds[key].append(time.perf_counter() - start)
        shares.append(sides["ours"].augment_seconds / seconds["ours"][-1])
        loads.append(os.getloadavg()[0])
    images = batch * steps
    row = {"setting": name, "backbone": setting.backbone, "size": setting.size, "threads": threads,
           "batch_size": batch, "steps_per_round": steps}
    for key, secs in seconds.items():
        row[f"{key}_images_per_s"] = round(images / statistics.median(secs), 1)
        row[f"{key}_images_per_s_all"] = [round(images / s, 1) for s in secs]
    for key in seconds:
        if key != "ours":
            row[f"ratio_vs_{key}"] = round(row["ours_images_per_s"] / row[f"{key}_images_per_s"], 2)
    if "ours_float32_contiguous" in seconds:  # the stages' channels_last weights against NCHW ones, both float32
        f32 = "ours_float32" if "ours_float32" in seconds else "ours"
        row["channels_last_gain"] = round(row[f"{f32}_images_per_s"] / row["ours_float32_contiguous_images_per_s"], 3)
    row["bf16_autocast"] = bf16_native(device)
    row["augment_share"] = round(statistics.median(shares), 3)
    row["load_average_1min"] = [round(x, 2) for x in loads]
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads in this process")
    parser.add_argument("--batch-size", type=int, default=32, help="the quickstart's")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed rounds of each pipeline")
    parser.add_argument("--steps", type=int, default=None, help="batches per round (default: per setting)")
    parser.add_argument("--quick", action="store_true",
                        help="small_cnn@16 at 1 thread, rounds of 10 steps (unless --steps): well under a minute")
    parser.add_argument("--contiguous", action="store_true",
                        help="also time the float32 step with NCHW weights, the peer of the stages' channels_last")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.settings, args.threads, args.steps = ["small_cnn@16"], [1], args.steps or 10
    rows = [measure(name, SETTINGS[name], t, args.batch_size, args.repeats, args.steps, args.contiguous)
            for name in args.settings for t in args.threads]
    report = {
        "command": " ".join(["benchmarks/train_step.py", *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick,
        "augment": "SimSiam CIFAR recipe (lt_ssl AugmentConfig defaults) at the setting's size, both sides",
        "optimizer": f"SGD lr {LR} per 256, momentum {MOMENTUM}, weight decay {WEIGHT_DECAY}",
        "results": rows,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
