"""MSN training-step throughput of the small ViT by patch size and image side, one process, printed as JSON.

Why: PMSN's toy trains at Fashion-MNIST's 28 px. vit_tiny's 4 px patches make that 49 tokens, and
vit_tiny_p7's 7 px patches make it 16, the token count of vit_tiny at 16 px. This measures what the choice buys:
images/s of the MSN step (forward on both views, loss, backward, AdamW, EMA update) on fixed random views at
batch 128, the settings alternating round by round so load from other processes hits them alike; medians over
the rounds, and each setting's speed as a ratio to vit_tiny at 28 px.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from lt_ssl.config import load_config
from lt_ssl.methods import build
from lt_ssl.methods.base import Batch
from lt_ssl.models import build_backbone

SETTINGS = (("vit_tiny", 16), ("vit_tiny", 28), ("vit_tiny_p7", 28))
REFERENCE = ("vit_tiny", 28)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="timed steps per setting and round (after one warm-up)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    method_cfg = load_config("configs/pmsn_toy.yaml", ["method.name=msn"]).method
    steps = {}
    for backbone, side in SETTINGS:
        torch.manual_seed(0)
        model = build(build_backbone(backbone), method_cfg)
        opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3)
        views = [torch.randn(args.batch, 3, side, side) for _ in range(2)]

        def step(i: int, model=model, opt=opt, views=views) -> None:
            loss = model.loss(Batch(views, torch.arange(args.batch), 0, i, 1000))["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.after_step()

        step(0)  # warm-up: allocator and oneDNN primitives
        steps[(backbone, side)] = step
    rates: dict[tuple[str, int], list[float]] = {s: [] for s in SETTINGS}
    for _ in range(args.rounds):
        for setting, step in steps.items():
            t0 = time.perf_counter()
            for i in range(args.steps):
                step(i + 1)
            rates[setting].append(args.batch * args.steps / (time.perf_counter() - t0))
    med = {s: statistics.median(r) for s, r in rates.items()}
    report = {
        "threads": args.threads, "batch": args.batch, "rounds": args.rounds, "steps": args.steps,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "settings": [{"backbone": b, "side": s, "tokens": (s // build_backbone(b).patch_size) ** 2,
                      "images_per_s": round(med[(b, s)], 1), "vs_vit_tiny_28px": round(med[(b, s)] / med[REFERENCE], 2)}
                     for b, s in SETTINGS],
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
