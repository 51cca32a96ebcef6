"""Tests for lt_ssl.cluster: the torch k-means matches sklearn's inertia and the result's invariants hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs

from lt_ssl import cluster
from lt_ssl.cluster import KMeansResult, cluster_sizes, kmeans, nonempty_clusters
from lt_ssl.errors import ConfigError, StageError


def _blobs(n: int, dim: int, centers: int, std: float) -> torch.Tensor:
    x, _ = make_blobs(n_samples=n, n_features=dim, centers=centers, cluster_std=std, random_state=0)
    return torch.tensor(x, dtype=torch.float32)


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return ((x[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)


@pytest.mark.parametrize(
    ("feats", "k"),
    [
        (_blobs(2000, 16, centers=5, std=1.0), 5),  # well separated
        (_blobs(2000, 8, centers=6, std=6.0), 6),  # overlapping blobs: no clear cut
        (torch.rand(1000, 6, generator=torch.Generator().manual_seed(1)) + 50.0, 5),  # uniform, far from the origin
    ],
)
def test_torch_inertia_matches_sklearn(feats: torch.Tensor, k: int) -> None:
    ref = kmeans(feats, k, backend="sklearn", n_init=5)
    res = kmeans(feats, k, backend="torch", n_init=5)
    assert res.backend == "torch" and ref.backend == "sklearn"
    assert res.inertia <= ref.inertia * 1.02
    x = feats.double().numpy()
    exact = float(((x - res.centroids[res.assignments]) ** 2).sum())
    assert res.inertia == pytest.approx(exact, rel=1e-4)


def test_assignments_are_nearest_centroid_and_types() -> None:
    feats = _blobs(1500, 10, centers=4, std=3.0)
    for backend in ("torch", "sklearn"):
        res = kmeans(feats, 4, backend=backend)
        assert isinstance(res, KMeansResult)
        assert res.assignments.dtype == np.int64 and res.assignments.shape == (1500,)
        assert res.centroids.dtype == np.float32 and res.centroids.shape == (4, 10)
        nearest = _nearest(feats.double().numpy(), res.centroids.astype(np.float64))
        assert (nearest == res.assignments).mean() >= 0.999  # float32 ties are the only allowed disagreement
        assert sum(cluster_sizes(res.assignments, 4)) == 1500


def test_torch_deterministic_under_seed() -> None:
    feats = _blobs(1200, 8, centers=6, std=4.0)
    a = kmeans(feats, 6, backend="torch", seed=3)
    b = kmeans(feats, 6, backend="torch", seed=3)
    np.testing.assert_array_equal(a.assignments, b.assignments)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.inertia == b.inertia


def test_torch_handles_duplicates_and_k_equal_n() -> None:
    # Fewer distinct points than clusters: k-means++ must still pick k centres and sizes must still sum to N.
    feats = torch.tensor([[0.0, 0.0]] * 5 + [[1.0, 1.0]] * 5)
    res = kmeans(feats, 3, backend="torch")
    assert sum(cluster_sizes(res.assignments, 3)) == 10
    assert res.inertia == pytest.approx(0.0, abs=1e-6)
    res = kmeans(torch.randn(6, 3), 6, backend="torch")
    assert sorted(res.assignments.tolist()) == list(range(6))


@pytest.mark.filterwarnings("ignore")  # clustering values near float32's limit overflows inside sklearn; not the point
def test_non_finite_features_are_refused_but_huge_finite_ones_are_not() -> None:
    for bad in (float("nan"), float("inf"), -float("inf")):
        feats = torch.randn(20, 3)
        feats[7, 1] = bad
        with pytest.raises(StageError, match="NaN or inf"):
            kmeans(feats, 2)
    # Finite values whose sum overflows float32: the cheap sum check fails, the elementwise one must not.
    huge = torch.tensor([[3e38, 3e38], [3e38, 2e38], [-3e38, -3e38], [-3e38, -2e38]])
    assert not torch.isfinite(huge.sum(dim=0)).all()
    assert sum(cluster_sizes(kmeans(huge, 2, backend="sklearn").assignments, 2)) == 4


def test_k_validation() -> None:
    feats = torch.randn(10, 3)
    with pytest.raises(ConfigError, match=r"cluster.k=11 is larger than the number of images \(10\); lower cluster.k"):
        kmeans(feats, 11)
    with pytest.raises(ConfigError, match="cluster.k=0"):
        kmeans(feats, 0)
    with pytest.raises(ConfigError, match="unknown"):
        kmeans(feats, 2, backend="faiss")


def test_auto_picks_torch_on_cpu() -> None:
    # benchmarks/kmeans.py measured the torch backend ahead of sklearn on CPU (see AUTO_BACKEND).
    assert kmeans(torch.randn(50, 4), 3).backend == "torch"


def test_k_equal_one_is_the_mean() -> None:
    feats = _blobs(500, 6, centers=3, std=2.0)
    res = kmeans(feats, 1, backend="torch")
    x = feats.double()
    assert (res.assignments == 0).all()
    np.testing.assert_allclose(res.centroids[0], x.mean(0).numpy(), atol=1e-4)
    assert res.inertia == pytest.approx(float(((x - x.mean(0)) ** 2).sum()), rel=1e-5)


def test_empty_cluster_is_reseeded_on_the_farthest_point() -> None:
    # A start far from every point owns nothing after the first assignment; like sklearn, Lloyd moves it onto
    # the point farthest from its centroid, and the run ends with every cluster in use.
    feats = _blobs(600, 4, centers=3, std=0.5)
    x = (feats - feats.mean(0)).contiguous()
    x_sq = x.pow(2).sum(1)
    start = torch.stack([x[0], x[1], torch.full((4,), 1e3)])
    centroids, labels, _ = cluster._lloyd(x, x_sq, start, max_iter=50, shift_tol=0.0)
    assert min(cluster_sizes(labels, 3)) > 0
    assert float(centroids.abs().max()) < 1e2


def _unit_mixture(n: int, dim: int, components: int) -> torch.Tensor:
    # As benchmarks/kmeans.py's data: overlapping Gaussians around random unit means, rows L2-normalised.
    gen = torch.Generator().manual_seed(0)
    means = torch.nn.functional.normalize(torch.randn(components, dim, generator=gen), dim=1)
    which = torch.randint(components, (n,), generator=gen)
    return torch.nn.functional.normalize(means[which] + torch.randn(n, dim, generator=gen) * 0.8 / dim**0.5, dim=1)


@pytest.mark.parametrize(
    ("feats", "k"),
    [
        (_blobs(3000, 16, centers=8, std=4.0), 8),  # low dimension: the half-gap test settles points
        (_unit_mixture(3000, 256, 16), 32),  # high dimension, overlapping: most points in doubt for many steps
    ],
)
def test_elkan_bounds_give_lloyds_iterates(monkeypatch: pytest.MonkeyPatch, feats: torch.Tensor, k: int) -> None:
    # The bounds only skip work: with them switched off (every step a dense pass) the result is the same.
    x = (feats - feats.mean(0)).contiguous()
    x_sq = x.pow(2).sum(1)
    start = cluster._kmeans_plus_plus(x, x_sq, k, 1, torch.Generator().manual_seed(0))[0]
    c_fast, l_fast, _ = cluster._lloyd(x, x_sq, start, max_iter=100, shift_tol=0.0)
    monkeypatch.setattr(cluster, "_MAX_BOUNDS", 0)
    c_dense, l_dense, _ = cluster._lloyd(x, x_sq, start, max_iter=100, shift_tol=0.0)
    np.testing.assert_array_equal(l_fast.numpy(), l_dense.numpy())
    torch.testing.assert_close(c_fast, c_dense, rtol=1e-5, atol=1e-5)


def test_lloyd_rank_is_inertia_less_norms() -> None:
    # kmeans() keeps the start with the lowest rank, so rank + sum ||x||^2 must be the inertia.
    feats = _blobs(2000, 16, centers=6, std=4.0)
    x = (feats - feats.mean(0)).contiguous()
    x_sq = x.pow(2).sum(1)
    for start in cluster._kmeans_plus_plus(x, x_sq, 6, 3, torch.Generator().manual_seed(0)):
        centroids, labels, rank = cluster._lloyd(x, x_sq, start, max_iter=100, shift_tol=0.0)
        exact = cluster._exact_inertia(x, centroids, labels)
        assert rank + float(x.double().pow(2).sum()) == pytest.approx(exact, rel=1e-5)


def test_batched_kmeans_plus_plus_picks_distinct_points_per_start() -> None:
    feats = _blobs(1000, 8, centers=10, std=1.0)
    starts = cluster._kmeans_plus_plus(feats, feats.pow(2).sum(1), 10, 4, torch.Generator().manual_seed(0))
    assert starts.shape == (4, 10, 8)
    for s in starts:
        assert torch.unique(s, dim=0).shape[0] == 10
    assert not torch.equal(starts[0], starts[1])  # each start draws its own candidates


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_torchpq_without_cuda_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="backend torchpq needs CUDA and the torchpq package"):
        kmeans(torch.randn(50, 4), 3, backend="torchpq")


def test_cluster_sizes_and_nonempty() -> None:
    ids = np.array([0, 2, 2, 4, 0, 2])
    assert cluster_sizes(ids, 5) == [2, 0, 3, 0, 1]
    assert nonempty_clusters(torch.from_numpy(ids), 5) == [0, 2, 4]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_on_cuda_matches_cpu() -> None:
    feats = _blobs(4000, 32, centers=8, std=2.0)
    cpu = kmeans(feats, 8, backend="torch")
    gpu = kmeans(feats.cuda(), 8)
    assert gpu.backend == "torch"
    assert gpu.inertia == pytest.approx(cpu.inertia, rel=1e-3)
