"""Throughput of lt_ssl's batched augmentation against torchvision's per-image pipeline, printed as JSON.

Both run the SimSiam CIFAR recipe (AugmentConfig defaults) on the same CPU and the same images,
in interleaved rounds; the best round of each is the figure least disturbed by other processes
(as timeit reports its minimum), the median is given beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision import transforms

from lt_ssl.config import AugmentConfig
from lt_ssl.data.augment import augment_batch

MEAN = (0.4914, 0.4822, 0.4465)  # CIFAR-10
STD = (0.2470, 0.2435, 0.2616)


def cifar_like(n: int, seed: int, side: int = 32) -> np.ndarray:
    """-> (n,side,side,3) uint8, smooth colour blobs plus noise, HWC as torchvision's CIFAR datasets hold them.

    Pure noise would make every pixel's hue random; smooth images exercise the same code paths
    with realistic statistics, and no download is needed.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(n, 4, 4, 3)).astype(np.float32)
    smooth = torch.nn.functional.interpolate(
        torch.from_numpy(coarse).permute(0, 3, 1, 2), size=(side, side), mode="bicubic", align_corners=False
    ).permute(0, 2, 3, 1).numpy()
    noisy = smooth + rng.normal(0, 12, size=smooth.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def torchvision_pipeline(cfg: AugmentConfig) -> transforms.Compose:
    """The classic SimSiam CIFAR transform, applied one PIL image at a time as a DataLoader worker does."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(
                cfg.size, scale=(cfg.crop_scale_min, cfg.crop_scale_max), ratio=(cfg.crop_ratio_min, cfg.crop_ratio_max)
            ),
            transforms.RandomHorizontalFlip(cfg.flip_p),
            transforms.RandomApply(
                [transforms.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)], p=cfg.jitter_p
            ),
            transforms.RandomGrayscale(cfg.grayscale_p),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )


def images_per_second(step: Callable[[], int]) -> float:
    """Images per second of one call of step (which returns how many images it processed)."""
    start = time.perf_counter()
    done = step()
    return done / (time.perf_counter() - start)


def extra_ops_rounds(batch: int, size: int, rounds: int) -> dict:
    """BCL's extra ops (lt_ssl.data.augment.extra_ops) at strengths U(0, 1) on float views: the grouped round the CPU
    runs against the masked round CUDA runs (every op on the whole batch), alternating in this process; medians."""
    from unittest import mock

    from lt_ssl.data import augment
    from lt_ssl.data.augment import ExtraOps, extra_ops

    g = torch.Generator().manual_seed(0)
    views, extra = torch.rand(batch, 3, size, size, generator=g), ExtraOps(torch.rand(batch, generator=g))
    seconds: dict[str, list[float]] = {"grouped": [], "masked": []}
    for _ in range(rounds):
        for path, devices in (("grouped", ()), ("masked", ("cpu",))):
            with mock.patch.object(augment, "SYNC_FREE_DEVICES", devices):
                start = time.perf_counter()
                extra_ops(views.clone(), extra, g)
                seconds[path].append(time.perf_counter() - start)
    grouped, masked = (statistics.median(seconds[k]) for k in ("grouped", "masked"))
    return {"batch": batch, "size": size, "rounds": rounds, "grouped_ms": round(1e3 * grouped, 2),
            "masked_ms": round(1e3 * masked, 2), "masked_vs_grouped": round(masked / grouped, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2048, help="images per timed pass")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 1 compares one core with one core")
    parser.add_argument("--rounds", type=int, default=7, help="timed passes of each pipeline, interleaved")
    parser.add_argument("--bcl-extra-ops", action="store_true",
                        help="instead: BCL's extra ops, the CPU's grouped round against CUDA's masked one, at 16 px")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.bcl_extra_ops:
        print(json.dumps({**extra_ops_rounds(args.batch_size, 16, args.rounds), "threads": args.threads,
                          "torch": torch.__version__, "load_average_1min": round(os.getloadavg()[0], 2)}, indent=2))
        return

    cfg = AugmentConfig()
    hwc = cifar_like(args.n, seed=0)
    nchw = torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous()
    generator = torch.Generator().manual_seed(0)
    pipeline = torchvision_pipeline(cfg)

    def batched() -> int:
        for start in range(0, args.n, args.batch_size):
            augment_batch(nchw[start : start + args.batch_size], cfg, MEAN, STD, generator)
        return args.n

    def per_image() -> int:
        for start in range(0, args.n, args.batch_size):
            torch.stack([pipeline(Image.fromarray(img)) for img in hwc[start : start + args.batch_size]])
        return args.n

    batched(), per_image()  # warm-up
    # Interleaved rounds, so that load from other processes hits both pipelines alike.
    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(images_per_second(batched))
        theirs.append(images_per_second(per_image))
    print(
        json.dumps(
            {
                "n": args.n,
                "batch_size": args.batch_size,
                "threads": args.threads,
                "rounds": args.rounds,
                "image": "32x32 uint8, CIFAR-like",
                "augment_batch_images_per_s": round(max(ours), 1),
                "torchvision_per_image_images_per_s": round(max(theirs), 1),
                "speedup": round(max(ours) / max(theirs), 2),
                "augment_batch_images_per_s_median": round(statistics.median(ours), 1),
                "torchvision_per_image_images_per_s_median": round(statistics.median(theirs), 1),
                "speedup_median": round(statistics.median(ours) / statistics.median(theirs), 2),
                "torch": torch.__version__,
                "torchvision": torchvision.__version__,
                "cpu_count": os.cpu_count(),
                "load_average_1min": round(os.getloadavg()[0], 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
