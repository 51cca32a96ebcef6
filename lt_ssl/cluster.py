"""K-means over backbone features (sklearn on CPU, a chunked torch Lloyd on GPU, or TorchPQ), returning cluster ids."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lt_ssl.errors import ConfigError, StageError

BACKENDS = ("auto", "sklearn", "torch", "torchpq")

# Elements of one (rows, k) distance block: 2**24 floats = 64 MiB, so 100k x 512 features with any k
# stay far below GPU memory while each block is still one large matmul.
_BLOCK_ELEMENTS = 2**24


@dataclass(frozen=True)
class KMeansResult:
    """assignments: (N,) int64 cluster ids; centroids: (k, D) float32; inertia: sum of squared distances."""

    assignments: np.ndarray
    centroids: np.ndarray
    inertia: float
    backend: str


def kmeans(
    features: Tensor,
    k: int,
    backend: str = "auto",
    seed: int = 0,
    n_init: int = 3,
    max_iter: int = 100,
    tol: float = 1e-4,
) -> KMeansResult:
    """Cluster features: (N, D) float into k clusters; the best of n_init k-means++ starts by inertia.

    backend "auto" is "torch" when the features are on CUDA and "sklearn" otherwise. tol is relative, as in
    sklearn: a run stops once the squared centroid shift is below tol times the mean per-dimension variance.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"cluster backend {backend!r} is unknown; use one of {', '.join(BACKENDS)}")
    if features.ndim != 2:
        raise StageError(f"features have shape {tuple(features.shape)}, expected (N, D); re-run feature extraction")
    n = features.shape[0]
    if k < 1:
        raise ConfigError(f"cluster.k={k} must be at least 1; set cluster.k to a positive integer")
    if k > n:
        raise ConfigError(f"cluster.k={k} is larger than the number of images ({n}); lower cluster.k")
    if n_init < 1 or max_iter < 1:
        raise ConfigError(f"k-means needs n_init >= 1 and max_iter >= 1 (got {n_init}, {max_iter}); raise them")
    if not bool(torch.isfinite(features).all()):
        raise StageError("features contain NaN or inf; the backbone diverged, re-run the base stage")

    if backend == "auto":
        backend = "torch" if features.is_cuda else "sklearn"
    if backend == "sklearn":
        result = _kmeans_sklearn(features, k, seed, n_init, max_iter, tol)
    elif backend == "torch":
        result = _kmeans_torch(features, k, seed, n_init, max_iter, tol)
    else:
        result = _kmeans_torchpq(features, k, seed, n_init, max_iter, tol)

    sizes = cluster_sizes(result.assignments, k)
    assert sum(sizes) == n, f"cluster sizes sum to {sum(sizes)}, not to the {n} images"
    assert result.centroids.shape == (k, features.shape[1])
    return result


def cluster_sizes(assignments: np.ndarray | Tensor, k: int) -> list[int]:
    """Images per cluster: assignments (N,) ids in [0, k) -> k counts (zeros for empty clusters)."""
    ids = _as_numpy_ids(assignments)
    if ids.size and (ids.min() < 0 or ids.max() >= k):
        raise StageError(f"cluster ids span [{ids.min()}, {ids.max()}], outside [0, {k}); re-run the cluster stage")
    return [int(c) for c in np.bincount(ids, minlength=k)]


def nonempty_clusters(assignments: np.ndarray | Tensor, k: int) -> list[int]:
    """Ids of the clusters that hold at least one image, ascending (the experts worth training)."""
    return [c for c, size in enumerate(cluster_sizes(assignments, k)) if size > 0]


def _as_numpy_ids(assignments: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(assignments, Tensor):
        assignments = assignments.detach().cpu().numpy()
    ids = np.asarray(assignments)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise StageError(f"cluster assignments must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    return ids.astype(np.int64, copy=False)


def _kmeans_sklearn(features: Tensor, k: int, seed: int, n_init: int, max_iter: int, tol: float) -> KMeansResult:
    from sklearn.cluster import KMeans

    x = features.detach().float().cpu().numpy()
    model = KMeans(n_clusters=k, init="k-means++", n_init=n_init, max_iter=max_iter, tol=tol, random_state=seed)
    model.fit(x)  # sklearn re-runs the assignment step after the last update, so labels match the centroids
    return KMeansResult(
        assignments=model.labels_.astype(np.int64),
        centroids=model.cluster_centers_.astype(np.float32),
        inertia=float(model.inertia_),
        backend="sklearn",
    )


def _kmeans_torch(features: Tensor, k: int, seed: int, n_init: int, max_iter: int, tol: float) -> KMeansResult:
    # k-means is translation invariant; centring keeps ||x||^2 - 2x.c + ||c||^2 from cancelling in float32.
    x = features.detach().float()
    mean = x.mean(dim=0)
    x = (x - mean).contiguous()
    x_sq = x.pow(2).sum(dim=1)
    shift_tol = tol * float(x.var(dim=0, unbiased=False).mean())
    # A CPU generator gives the same k-means++ draws whichever device the features are on.
    gen = torch.Generator().manual_seed(seed)

    best: tuple[float, Tensor, Tensor] | None = None
    for _ in range(n_init):
        centroids = _lloyd(x, x_sq, _kmeans_plus_plus(x, x_sq, k, gen), max_iter, shift_tol)
        labels, _ = _assign(x, x_sq, centroids)
        inertia = _exact_inertia(x, centroids, labels)
        if best is None or inertia < best[0]:
            best = (inertia, centroids, labels)
    assert best is not None
    inertia, centroids, labels = best
    return KMeansResult(
        assignments=labels.cpu().numpy().astype(np.int64),
        centroids=(centroids + mean).cpu().numpy().astype(np.float32),
        inertia=inertia,
        backend="torch",
    )


def _block_rows(n: int, width: int) -> int:
    return max(1, min(n, _BLOCK_ELEMENTS // max(width, 1)))


def _sq_dists(x: Tensor, x_sq: Tensor, c: Tensor) -> Tensor:
    """Squared distances (B, k) from x: (B, D) to c: (k, D) as ||x||^2 - 2 x.c + ||c||^2, clamped at 0."""
    d = torch.addmm(x_sq[:, None] + c.pow(2).sum(dim=1)[None, :], x, c.T, alpha=-2.0)
    return d.clamp_min_(0.0)


def _assign(x: Tensor, x_sq: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest centroid per point: labels (N,) long and their squared distances (N,)."""
    n = x.shape[0]
    labels = torch.empty(n, dtype=torch.long, device=x.device)
    dists = torch.empty(n, dtype=x.dtype, device=x.device)
    step = _block_rows(n, centroids.shape[0])
    for start in range(0, n, step):
        stop = min(start + step, n)
        dists[start:stop], labels[start:stop] = _sq_dists(x[start:stop], x_sq[start:stop], centroids).min(dim=1)
    return labels, dists


def _exact_inertia(x: Tensor, centroids: Tensor, labels: Tensor) -> float:
    # Summed as (x - c)^2 rather than from the expanded form, and over rows in float64, so it does not cancel.
    total = 0.0
    step = _block_rows(x.shape[0], x.shape[1])
    for start in range(0, x.shape[0], step):
        diff = x[start : start + step] - centroids[labels[start : start + step]]
        total += float(diff.mul_(diff).sum(dim=1).double().sum())
    return total


def _kmeans_plus_plus(x: Tensor, x_sq: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """Greedy k-means++ (as sklearn): each step samples 2 + log k candidates by D^2 and keeps the best one."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=gen))
    centroids = [x[first]]
    closest = _sq_dists(x, x_sq, x[first : first + 1])[:, 0]
    for _ in range(1, k):
        cdf = torch.cumsum(closest.double(), dim=0)
        if float(cdf[-1]) <= 0.0:
            # Every point sits on a chosen centre (duplicates): any point is as good as another.
            candidates = torch.randint(n, (trials,), generator=gen).to(x.device)
        else:
            u = torch.rand(trials, generator=gen, dtype=torch.float64).to(x.device) * cdf[-1]
            candidates = torch.searchsorted(cdf, u).clamp_(max=n - 1)
        cand_dists = torch.minimum(closest[:, None], _sq_dists(x, x_sq, x[candidates]))  # (N, trials)
        best = int(torch.argmin(cand_dists.double().sum(dim=0)))
        centroids.append(x[candidates[best]])
        closest = cand_dists[:, best].contiguous()
    return torch.stack(centroids)


def _lloyd(x: Tensor, x_sq: Tensor, centroids: Tensor, max_iter: int, shift_tol: float) -> Tensor:
    """Lloyd iterations from centroids: (k, D); returns the final centroids: (k, D)."""
    n, dim = x.shape
    k = centroids.shape[0]
    step = _block_rows(n, max(k, dim))
    for _ in range(max_iter):
        sums = torch.zeros(k, dim, dtype=torch.float64, device=x.device)
        counts = torch.zeros(k, dtype=torch.float64, device=x.device)
        dists = torch.empty(n, dtype=x.dtype, device=x.device)
        for start in range(0, n, step):
            stop = min(start + step, n)
            xb = x[start:stop]
            dists[start:stop], lab = _sq_dists(xb, x_sq[start:stop], centroids).min(dim=1)
            # A one-hot matmul instead of index_add_: deterministic on CUDA, where index_add_ uses atomics.
            onehot = torch.nn.functional.one_hot(lab, k).to(x.dtype)
            sums += (onehot.T @ xb).double()
            counts += onehot.sum(dim=0).double()
        new = (sums / counts.clamp_min(1.0)[:, None]).to(x.dtype)
        empty = torch.nonzero(counts == 0).flatten()
        if empty.numel():
            # Re-seed empty clusters on the points farthest from their centroid, as sklearn does.
            new[empty] = x[torch.topk(dists, empty.numel()).indices]
        shift = float((new - centroids).double().pow(2).sum())
        centroids = new
        if shift <= shift_tol:
            break
    return centroids


def _kmeans_torchpq(features: Tensor, k: int, seed: int, n_init: int, max_iter: int, tol: float) -> KMeansResult:
    missing = ConfigError(
        "backend torchpq needs CUDA and the torchpq package (pip install lt-ssl[torchpq]); use backend=torch or sklearn"
    )
    if not torch.cuda.is_available():
        raise missing
    try:
        from torchpq.clustering import KMeans as PQKMeans
    except Exception as exc:  # torchpq imports CuPy at import time, which fails in many ways without a GPU stack
        raise missing from exc

    x = features.detach().float().cuda()
    mean = x.mean(dim=0)
    x = x - mean
    shift_tol = tol * float(x.var(dim=0, unbiased=False).mean())
    # TorchPQ draws its k-means++ starts from numpy's global RNG; seed it and put the caller's state back.
    rng_state = np.random.get_state()
    np.random.seed(seed)
    try:
        model = PQKMeans(n_clusters=k, n_redo=n_init, max_iter=max_iter, tol=shift_tol, init_mode="kmeans++")
        model.fit(x.T.contiguous())  # TorchPQ takes (D, N)
    finally:
        np.random.set_state(rng_state)
    centroids = model.centroids.T.contiguous().float()  # (k, D)
    # TorchPQ returns the labels from before its last centroid update; re-assign so they match the centroids.
    x_sq = x.pow(2).sum(dim=1)
    labels, _ = _assign(x, x_sq, centroids)
    return KMeansResult(
        assignments=labels.cpu().numpy().astype(np.int64),
        centroids=(centroids + mean).cpu().numpy().astype(np.float32),
        inertia=_exact_inertia(x, centroids, labels),
        backend="torchpq",
    )
