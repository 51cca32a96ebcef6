"""Time and inertia of scikit-learn's KMeans against lt_ssl's torch k-means (and TorchPQ on CUDA), printed as JSON.

Data: a long-tailed mixture of Gaussians in 512 dimensions, L2-normalised as the cluster stage's features
are, from a fixed seed. Every backend gets the same n_init, max_iter, tol and seed (k-means++ starts,
sklearn's default algorithm "lloyd"); the backends run alternately in one process, so load from other
processes hits them alike, and the medians over the repeats are reported with the ratio
sklearn_time / torch_time ("speedup") and torch_inertia / sklearn_inertia.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import sklearn
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from lt_ssl.cluster import kmeans


def gaussian_mixture(n: int, dim: int, components: int, seed: int) -> torch.Tensor:
    """-> (n, dim) float32 rows of unit norm: `components` Gaussians with Zipf-like weights (a long tail).

    Means are random unit vectors; the per-point noise has about the norm of a mean, so the
    components overlap as features of similar classes do, and k-means has real work to do.
    """
    gen = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(components, dim, generator=gen), dim=1)
    weights = 1.0 / torch.arange(1, components + 1, dtype=torch.float64)
    which = torch.multinomial(weights, n, replacement=True, generator=gen)
    noise = torch.randn(n, dim, generator=gen) * (0.8 / dim**0.5)
    return F.normalize(means[which] + noise, dim=1)


def timed(features: torch.Tensor, k: int, backend: str, args: argparse.Namespace) -> tuple[float, float]:
    """(seconds, inertia) of one kmeans() call."""
    if features.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = kmeans(features, k, backend=backend, seed=args.seed, n_init=args.n_init, max_iter=args.max_iter,
                    tol=args.tol)
    if features.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, result.inertia


def torchpq_unavailable() -> str | None:
    """Why TorchPQ cannot run here, or None when it can."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        import torchpq  # noqa: F401
    except Exception as exc:  # torchpq imports CuPy at import time, which fails in many ways
        return f"torchpq does not import ({type(exc).__name__}: {exc})"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, nargs="+", default=[10, 64])
    parser.add_argument("--components", type=int, default=32, help="Gaussians in the mixture")
    parser.add_argument("--n-init", type=int, default=3, help="as cluster.n_init's default")
    parser.add_argument("--max-iter", type=int, default=100, help="as cluster.max_iter's default")
    parser.add_argument("--tol", type=float, default=1e-4, help="sklearn's default, relative to the data variance")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed runs of each backend")
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenMP/BLAS threads for both")
    parser.add_argument("--device", default="cpu", help="where the torch backends run: cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    features = gaussian_mixture(args.n, args.dim, args.components, args.seed)
    on_device = features.to(args.device)
    skip_pq = torchpq_unavailable()
    runs: list[tuple[str, torch.Tensor]] = [("sklearn", features), ("torch", on_device)]
    if skip_pq is None:
        runs.append(("torchpq", on_device))

    table = []
    with threadpool_limits(limits=args.threads):
        for k in args.k:
            times: dict[str, list[float]] = {name: [] for name, _ in runs}
            inertias: dict[str, list[float]] = {name: [] for name, _ in runs}
            for name, x in runs:  # warm-up: imports, allocator, CUDA context
                timed(x[:2000], min(k, 2000), name, args)
            for _ in range(args.repeats):
                for name, x in runs:
                    seconds, inertia = timed(x, k, name, args)
                    times[name].append(seconds)
                    inertias[name].append(inertia)
            row: dict = {"k": k}
            for name, _ in runs:
                row[f"{name}_s"] = round(statistics.median(times[name]), 3)
                row[f"{name}_s_all"] = [round(t, 3) for t in times[name]]
                row[f"{name}_inertia"] = round(statistics.median(inertias[name]), 3)
            for name, _ in runs[1:]:
                row[f"{name}_speedup"] = round(row["sklearn_s"] / row[f"{name}_s"], 2)
                row[f"{name}_inertia_ratio"] = round(row[f"{name}_inertia"] / row["sklearn_inertia"], 5)
            table.append(row)

    print(
        json.dumps(
            {
                "data": f"{args.n} x {args.dim} float32, {args.components}-Gaussian long-tailed mixture, "
                f"L2-normalised, seed {args.seed}",
                "n_init": args.n_init,
                "max_iter": args.max_iter,
                "tol": args.tol,
                "init": "k-means++ (greedy, 2 + ln k candidates per step)",
                "sklearn_algorithm": "lloyd",
                "repeats": args.repeats,
                "threads": args.threads,
                "device": args.device,
                "torchpq": "ran" if skip_pq is None else f"skipped: {skip_pq}",
                "results": table,
                "torch": torch.__version__,
                "sklearn": sklearn.__version__,
                "cpu_count": os.cpu_count(),
                "load_average_1min": round(os.getloadavg()[0], 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
