"""Tests for lt_ssl.cluster: the torch k-means matches sklearn's inertia and the result's invariants hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs

from lt_ssl.cluster import KMeansResult, cluster_sizes, kmeans, nonempty_clusters
from lt_ssl.errors import ConfigError


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


def test_k_validation() -> None:
    feats = torch.randn(10, 3)
    with pytest.raises(ConfigError, match=r"cluster.k=11 is larger than the number of images \(10\); lower cluster.k"):
        kmeans(feats, 11)
    with pytest.raises(ConfigError, match="cluster.k=0"):
        kmeans(feats, 0)
    with pytest.raises(ConfigError, match="unknown"):
        kmeans(feats, 2, backend="faiss")


def test_auto_picks_sklearn_on_cpu() -> None:
    assert kmeans(torch.randn(50, 4), 3).backend == "sklearn"


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
