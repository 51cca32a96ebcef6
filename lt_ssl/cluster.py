"""K-means over backbone features (sklearn on CPU, a chunked torch Lloyd on GPU, or TorchPQ), returning cluster ids."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lt_ssl.errors import ConfigError, StageError

BACKENDS = ("auto", "sklearn", "torch", "torchpq")
# cluster.backend=auto: the torch k-means, on CPU too. Measured 2026-12-04 on the 2-core dev box (shared with other
# jobs, load 2.3-4.5), 1 thread, n_init=3, max_iter=100, tol=1e-4, inertia equal within 0.7%:
#   python benchmarks/kmeans.py --threads 1 --repeats 3        50k x 512: K=10 2.8-4.1x sklearn, K=64 3.0-3.2x
#   python benchmarks/kmeans.py --threads 1 --n 5000 --k 3 10 --repeats 5              K=3 1.13x, K=10 1.95x
# (benchmarks/README.md has the tables.) On CUDA it also keeps the features off the host.
AUTO_BACKEND = "torch"

# Rows per block of the Lloyd passes: 1024 x 512 float32 = 2 MiB stays in cache between the distance matmul
# and the index_add_ that reads the same rows (measured on 2 cores: 1024 rows beat 8192 by 20-30%), and it
# bounds the (rows, k) distance block whatever N is.
_CACHE_ROWS = 1024
# A sparse pass gathers the rows in doubt but updates the cluster sums for the moved points only, where a dense
# pass re-adds every row: it pays until nearly all points are in doubt. benchmarks/kmeans.py, 50k x 512, 1 thread:
# K=64 7.9-8.9 s at 0.5, 7.3-7.8 s at 0.7, 6.6-6.9 s at 0.8 to 1.0 (alternating runs); K=10 flat (0.74-0.83 s).
_DENSE_FRACTION = 0.9
# Elkan's lower bounds take N x k floats; above 2**26 (256 MiB) every Lloyd step is a dense pass instead.
_MAX_BOUNDS = 2**26


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

    backend "auto" is "torch" on every device (see AUTO_BACKEND). tol is relative, as in sklearn: a run stops once
    the squared centroid shift is below tol times the mean per-dimension variance.
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
    # One non-finite value makes the sum non-finite; only then (or on overflow) is the elementwise check paid.
    if not bool(torch.isfinite(features.sum())) and not bool(torch.isfinite(features).all()):
        raise StageError("features contain NaN or inf; the backbone diverged, re-run the base stage")

    if backend == "auto":
        backend = AUTO_BACKEND
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
    # Computed once (every distance below reuses it) per cache-sized block: 8x faster than in one go.
    x_sq = torch.cat([x[start : start + _CACHE_ROWS].pow(2).sum(dim=1) for start in range(0, x.shape[0], _CACHE_ROWS)])
    # sklearn's mean per-dimension variance: x is centred, so it is sum x_sq / (N D) (x.var(dim=0) took 30x longer).
    shift_tol = tol * float(x_sq.double().sum()) / x.numel()
    # A CPU generator gives the same k-means++ draws whichever device the features are on.
    gen = torch.Generator().manual_seed(seed)

    # Starts are ranked by inertia less sum ||x||^2 (the same for all), from the cluster sums: O(k D) per start;
    # the exact inertia, a pass over x, is computed for the best one only.
    best: tuple[float, Tensor, Tensor] | None = None
    for start in _kmeans_plus_plus(x, x_sq, k, n_init, gen):
        centroids, labels, rank = _lloyd(x, x_sq, start, max_iter, shift_tol)
        if best is None or rank < best[0]:
            best = (rank, centroids, labels)
    assert best is not None
    _, centroids, labels = best
    return KMeansResult(
        assignments=labels.cpu().numpy().astype(np.int64),
        centroids=(centroids + mean).cpu().numpy().astype(np.float32),
        inertia=_exact_inertia(x, centroids, labels),
        backend="torch",
    )


def _sq_dists(c: Tensor, c_sq: Tensor, x: Tensor, x_sq: Tensor) -> Tensor:
    """Squared distances (m, N) from c: (m, D) to x: (N, D) as ||c||^2 - 2 c.x + ||x||^2, clamped at 0.

    In (m, N) order and per cache-sized block of x: for k-means++'s 12-18 candidate columns MKL runs this
    1.2-1.35x faster than one (N, D) @ (D, m) product (benchmarks/README.md, k-means).
    """
    blocks = [
        torch.addmm(c_sq[:, None] + x_sq[None, start : start + _CACHE_ROWS], c, x[start : start + _CACHE_ROWS].T,
                    alpha=-2.0)
        for start in range(0, x.shape[0], _CACHE_ROWS)
    ]
    return torch.cat(blocks, dim=1).clamp_min_(0.0)


def _exact_inertia(x: Tensor, centroids: Tensor, labels: Tensor) -> float:
    # Summed as (x - c)^2 rather than from the expanded form, and over rows in float64, so it does not cancel.
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], _CACHE_ROWS):
        diff = x[start : start + _CACHE_ROWS] - centroids[labels[start : start + _CACHE_ROWS]]
        total += diff.mul_(diff).sum(dim=1).double().sum()
    return float(total)


def _kmeans_plus_plus(x: Tensor, x_sq: Tensor, k: int, n_init: int, gen: torch.Generator) -> Tensor:
    """n_init greedy k-means++ starts (as sklearn: each step samples 2 + ln k candidates by D^2 and keeps the one
    that lowers the potential most), drawn together: one pass over x per step serves every start.

    Returns (n_init, k, D) centroids. Holds (n_init * (2 + ln k), N) candidate distances at a time.
    """
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    rows = torch.arange(n_init, device=x.device)
    chosen = torch.empty(n_init, k, dtype=torch.long, device=x.device)
    chosen[:, 0] = torch.randint(n, (n_init,), generator=gen).to(x.device)
    closest = _sq_dists(x[chosen[:, 0]], x_sq[chosen[:, 0]], x, x_sq)  # (n_init, N)
    for step in range(1, k):
        cdf = torch.cumsum(closest.double(), dim=1)  # (n_init, N)
        u = torch.rand(n_init, trials, generator=gen, dtype=torch.float64).to(x.device) * cdf[:, -1:]
        candidates = torch.searchsorted(cdf, u).clamp_(max=n - 1)  # (n_init, trials)
        degenerate = cdf[:, -1] <= 0.0
        if bool(degenerate.any()):
            # Every point sits on a chosen centre (duplicates): any point is as good as another.
            draws = torch.randint(n, (n_init, trials), generator=gen).to(x.device)
            candidates = torch.where(degenerate[:, None], draws, candidates)
        flat = candidates.flatten()
        d = _sq_dists(x[flat], x_sq[flat], x, x_sq).view(n_init, trials, n)
        d = torch.minimum(d, closest[:, None, :])
        pick = d.double().sum(dim=2).argmin(dim=1)  # (n_init,): the candidate with the lowest potential
        chosen[:, step] = candidates[rows, pick]
        closest = d[rows, pick].contiguous()
    return x[chosen]


def _lloyd(x: Tensor, x_sq: Tensor, centroids: Tensor, max_iter: int, shift_tol: float) -> tuple[Tensor, Tensor, float]:
    """Lloyd iterations from centroids: (k, D) -> (centroids (k, D), labels (N,) nearest to them, the inertia less
    sum ||x||^2: sum_j n_j ||c_j||^2 - 2 c_j . s_j over the clusters' sizes n_j and float64 sums s_j).

    The iterates are Lloyd's, with sklearn's stopping rules (labels unchanged, or squared centroid shift
    <= shift_tol), computed with Elkan's bounds (ICML 2003): u(x) >= d(x, c_a) for the own centroid a and
    l(x, j) <= d(x, c_j) for every j, moved by the centroid shifts each step (u += shift_a, l -= shift_j). By the
    triangle inequality c_j cannot be nearer than c_a when u <= l(x, j) or u <= d(c_a, c_j) / 2, so only points
    with some other j in doubt are recomputed; while most points are in doubt (the first steps) a dense pass over
    all points is cheaper than gathering them.
    """
    k = centroids.shape[0]
    keep_bounds = x.shape[0] * k <= _MAX_BOUNDS
    state = _dense_pass(x, x_sq, centroids, keep_bounds)
    for _ in range(max_iter):
        labels, upper, lower, sums, counts = state
        new = (sums / counts.clamp_min(1.0)[:, None]).to(x.dtype)
        empty = torch.nonzero(counts == 0).flatten()
        if empty.numel():
            new = _relocate_empty(x, new, centroids, labels, sums, counts, empty)
        shift = (new - centroids).double().pow(2).sum(dim=1)  # (k,) squared
        centroids = new
        if k == 1:
            break  # one centroid: the mean, after one step
        doubt = None
        if lower is not None and not empty.numel():
            doubt = _in_doubt(centroids, labels, upper, lower, shift.sqrt().to(x.dtype))
        if doubt is None or doubt.numel() > _DENSE_FRACTION * x.shape[0]:
            state = _dense_pass(x, x_sq, centroids, keep_bounds)
            moved = int((state[0] != labels).sum())
        else:
            moved = _sparse_pass(x, x_sq, centroids, doubt, *state)
        if moved == 0 or float(shift.sum()) <= shift_tol:
            break
    labels, _, _, sums, counts = state
    c = centroids.double()
    rank = float((counts * c.pow(2).sum(dim=1)).sum() - 2.0 * (c * sums).sum())
    return centroids, labels, rank


def _dense_pass(
    x: Tensor, x_sq: Tensor, centroids: Tensor, keep_bounds: bool
) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor]:
    """Assign every point: -> labels (N,), distance to the own centroid (N,), distances to the other centroids
    (N, k) as the lower bounds (None unless keep_bounds; inf for the own one), float64 cluster sums (k, D) and
    counts (k,).

    Distances and sums are fused per cache-sized block of rows, so each point is read from memory once.
    index_add_ is deterministic on CPU; on CUDA its atomic float64 adds may differ in the last bits between runs
    (torch.use_deterministic_algorithms(True) makes them deterministic, at some cost).
    """
    n, dim = x.shape
    k = centroids.shape[0]
    c_sq = centroids.pow(2).sum(dim=1)
    labels = torch.empty(n, dtype=torch.long, device=x.device)
    upper = torch.empty(n, dtype=x.dtype, device=x.device)
    lower = torch.empty(n, k, dtype=x.dtype, device=x.device) if keep_bounds else None
    sums = torch.zeros(k, dim, dtype=torch.float64, device=x.device)
    block_sums = torch.empty(k, dim, dtype=x.dtype, device=x.device)
    for start in range(0, n, _CACHE_ROWS):
        stop = min(start + _CACHE_ROWS, n)
        xb = x[start:stop]
        labels[start:stop], upper[start:stop], dists = _nearest(xb, x_sq[start:stop], centroids, c_sq, keep_bounds)
        if lower is not None:
            lower[start:stop] = dists
        sums += block_sums.zero_().index_add_(0, labels[start:stop], xb)
    counts = torch.bincount(labels, minlength=k).to(torch.float64)
    return labels, upper, lower, sums, counts


def _nearest(
    xb: Tensor, xb_sq: Tensor, centroids: Tensor, c_sq: Tensor, all_dists: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Nearest centroid per row of xb: (B, D) -> labels (B,), the distance (not squared) to it, and the distances
    to every other centroid (B, k), the own one set to inf (Elkan's lower bounds), if all_dists else None."""
    partial = torch.addmm(c_sq[None, :], xb, centroids.T, alpha=-2.0)  # d^2 - ||x||^2: same argmin
    if all_dists:
        dists = partial.add_(xb_sq[:, None]).clamp_min_(0.0).sqrt_()
        nearest, labels = dists.min(dim=1)
        return labels, nearest, dists.scatter_(1, labels[:, None], math.inf)
    nearest, labels = partial.min(dim=1)
    return labels, nearest.add_(xb_sq).clamp_min_(0.0).sqrt_(), None


def _in_doubt(centroids: Tensor, labels: Tensor, upper: Tensor, lower: Tensor, shift: Tensor) -> Tensor:
    """Move the bounds by the centroid shifts: (k,) (not squared), in place; -> ids of the points for which
    some other centroid may now be nearer than their own.

    Of Elkan's pair test (u > l(x, j) and u > d(c_a, c_j) / 2) the first half is taken as u > min_j l(x, j) (the
    own entry of `lower` is inf), the second as one test per point (u <= half the distance from c_a to its nearest
    other centroid settles x, as in Hamerly's k-means). In 512 dimensions the per-pair half gaps settled no point
    that the lower bounds left in doubt (benchmarks/kmeans.py's data, K=10 and 64), and an in-place subtraction
    and a row minimum run 10x faster than the broadcast (N, k) comparisons and gather that they need.
    """
    upper += shift[labels]
    lower -= shift[None, :]
    c_sq = centroids.pow(2).sum(dim=1)
    half_gaps = torch.addmm(c_sq[:, None] + c_sq[None, :], centroids, centroids.T, alpha=-2.0)
    half_gaps = half_gaps.clamp_min_(0.0).sqrt_().mul_(0.5).fill_diagonal_(math.inf)  # (k, k); own one never
    doubt = (lower.amin(dim=1) < upper) & (upper > half_gaps.amin(dim=1)[labels])
    return torch.nonzero(doubt).flatten()


def _sparse_pass(x: Tensor, x_sq: Tensor, centroids: Tensor, doubt: Tensor, labels: Tensor, upper: Tensor,
                 lower: Tensor, sums: Tensor, counts: Tensor) -> int:
    """Re-assign the points `doubt` only, updating labels, bounds, sums and counts in place; -> how many moved.

    Rows are gathered into one reused buffer: fresh large allocations cost more than the arithmetic here.
    """
    c_sq = centroids.pow(2).sum(dim=1)
    buf = torch.empty(min(_CACHE_ROWS, doubt.numel()), x.shape[1], dtype=x.dtype, device=x.device)
    moved = 0
    for start in range(0, doubt.numel(), _CACHE_ROWS):
        idx = doubt[start : start + _CACHE_ROWS]
        xb = torch.index_select(x, 0, idx, out=buf[: idx.numel()])
        new_labels, upper[idx], lower[idx] = _nearest(xb, x_sq[idx], centroids, c_sq, True)
        old = labels[idx]
        changed = torch.nonzero(new_labels != old).flatten()
        if changed.numel():
            labels[idx] = new_labels
            rows, src, dst = xb[changed].double(), old[changed], new_labels[changed]
            sums.index_add_(0, dst, rows).index_add_(0, src, rows, alpha=-1.0)
            ones = torch.ones_like(dst, dtype=counts.dtype)
            counts.index_add_(0, dst, ones).index_add_(0, src, ones, alpha=-1.0)
            moved += changed.numel()
    return moved


def _relocate_empty(x: Tensor, new: Tensor, old: Tensor, labels: Tensor, sums: Tensor, counts: Tensor,
                    empty: Tensor) -> Tensor:
    """As sklearn: each empty cluster takes one of the points farthest from their (old) centroid, and that
    point leaves its cluster's mean. Returns the corrected centroids (k, D); sums/counts are left to the caller."""
    dists = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], _CACHE_ROWS):
        diff = x[start : start + _CACHE_ROWS] - old[labels[start : start + _CACHE_ROWS]]
        dists[start : start + _CACHE_ROWS] = diff.mul_(diff).sum(dim=1)
    far = torch.topk(dists, empty.numel()).indices
    sums, counts = sums.clone(), counts.clone()
    sums.index_add_(0, labels[far], x[far].double(), alpha=-1.0)
    counts.index_add_(0, labels[far], torch.ones_like(far, dtype=counts.dtype), alpha=-1.0)
    new = new.clone()
    donors = torch.unique(labels[far])
    donors = donors[counts[donors] > 0]
    new[donors] = (sums[donors] / counts[donors, None]).to(x.dtype)
    new[empty] = x[far]
    return new


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
    labels = _dense_pass(x, x.pow(2).sum(dim=1), centroids, keep_bounds=False)[0]
    return KMeansResult(
        assignments=labels.cpu().numpy().astype(np.int64),
        centroids=(centroids + mean).cpu().numpy().astype(np.float32),
        inertia=_exact_inertia(x, centroids, labels),
        backend="torchpq",
    )
