"""Tests for lt_ssl.evaluate: weighted kNN against sklearn, the linear probe, group accuracy, feature extraction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.neighbors import KNeighborsClassifier
from torch import nn

from lt_ssl.errors import ConfigError, DataError
from lt_ssl.evaluate import (
    _device_of,
    accuracy_report,
    assert_unchanged,
    extract_features,
    knn_predict,
    linear_probe,
    pixel_encoder,
    state_snapshot,
)


def _blob_split(n_train: int, n_test: int, dim: int, classes: int, std: float) -> tuple[torch.Tensor, ...]:
    x, y = make_blobs(n_samples=n_train + n_test, n_features=dim, centers=classes, cluster_std=std, random_state=0)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


@pytest.mark.parametrize(("k", "temperature"), [(20, 0.1), (5, 0.5), (10_000, 0.07)])
def test_knn_matches_sklearn_weighted_cosine(k: int, temperature: float) -> None:
    # Overlapping blobs so that the weighted vote, not just the nearest neighbour, decides many points.
    train_x, train_y, test_x, _ = _blob_split(1500, 500, 16, classes=6, std=8.0)
    preds = knn_predict(train_x, train_y, test_x, num_classes=6, k=k, temperature=temperature, chunk_size=128)
    ref = KNeighborsClassifier(
        n_neighbors=min(k, 1500),  # knn_predict clamps k to the training set; sklearn would refuse
        metric="cosine",
        algorithm="brute",
        weights=lambda dist: np.exp((1.0 - dist) / temperature),  # cosine distance = 1 - similarity
    ).fit(train_x.numpy(), train_y.numpy())
    agreement = (preds.numpy() == ref.predict(test_x.numpy())).mean()
    assert preds.dtype == torch.long and preds.shape == (500,)
    assert agreement >= 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: scatter_add_'s nondeterministic order is CUDA's")
def test_knn_on_cuda_uses_only_deterministic_kernels(monkeypatch) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic mode refuses cuBLAS without it
    train_x, train_y, test_x, _ = _blob_split(1500, 500, 16, classes=6, std=8.0)
    cpu = knn_predict(train_x, train_y, test_x, num_classes=6, k=50)
    torch.use_deterministic_algorithms(True)  # raises on any op without a deterministic CUDA kernel
    try:
        cuda = knn_predict(train_x.cuda(), train_y.cuda(), test_x.cuda(), num_classes=6, k=50)
    finally:
        torch.use_deterministic_algorithms(False)
    assert (cuda.cpu() == cpu).float().mean() >= 0.99  # CUDA's matmul may round differently at a near-tie


def test_knn_validates_inputs() -> None:
    x, y = torch.randn(10, 4), torch.arange(10) % 3
    with pytest.raises(ConfigError, match="temperature"):
        knn_predict(x, y, x, 3, temperature=0.0)
    with pytest.raises(DataError, match="outside"):
        knn_predict(x, y + 1, x, 3)


def test_linear_probe_separable_and_deterministic() -> None:
    train_x, train_y, test_x, test_y = _blob_split(600, 300, 32, classes=5, std=1.5)
    preds = linear_probe(train_x, train_y, test_x, num_classes=5, epochs=30, seed=1)
    assert (preds == test_y).float().mean() >= 0.99
    again = linear_probe(train_x, train_y, test_x, num_classes=5, epochs=30, seed=1)
    assert torch.equal(preds, again)
    # Chunking the loss only bounds memory; it is the same full-batch objective.
    chunked = linear_probe(train_x, train_y, test_x, num_classes=5, epochs=30, seed=1, batch_size=256)
    assert (chunked == preds).float().mean() >= 0.99


def test_linear_probe_beats_chance_on_overlapping_classes() -> None:
    train_x, train_y, test_x, test_y = _blob_split(1500, 500, 16, classes=6, std=8.0)
    knn_acc = (knn_predict(train_x, train_y, test_x, 6, k=20) == test_y).float().mean()
    probe_acc = (linear_probe(train_x, train_y, test_x, 6, epochs=30) == test_y).float().mean()
    assert probe_acc >= 0.5 and probe_acc >= knn_acc - 0.05


def test_accuracy_report_groups() -> None:
    # class:   0  0  0  0  1  1  2  3
    # correct: y  y  n  y  n  y  y  n   -> per class 3/4, 1/2, 1, 0
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3])
    preds = torch.tensor([0, 0, 1, 0, 0, 1, 2, 0])
    rep = accuracy_report(preds, labels, num_classes=5, groups={"many": [0], "medium": [1, 2], "few": [3, 4]})
    assert rep["top1"] == pytest.approx(5 / 8)
    assert rep["per_class"][:4] == pytest.approx([0.75, 0.5, 1.0, 0.0])
    assert math.isnan(rep["per_class"][4])  # class 4 has no test images
    assert rep["many"] == pytest.approx(3 / 4)
    assert rep["medium"] == pytest.approx(2 / 3)  # images-weighted: (1 + 1) / (2 + 1), not (0.5 + 1) / 2
    assert rep["few"] == pytest.approx(0.0)
    assert math.isnan(accuracy_report(preds, labels, 5, {"none": [4]})["none"])
    with pytest.raises(ConfigError, match="outside"):
        accuracy_report(preds, labels, 5, {"many": [7]})


class _Tiny(nn.Module):
    """A BN network whose eval-mode output differs from train mode, so a missed .eval() would show."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, 8, 1, 1): extract_features flattens it


def test_extract_features_keeps_model_and_modes() -> None:
    torch.manual_seed(0)
    model = _Tiny()
    model.train()
    model.body[1].eval()  # a frozen BN inside a training model must stay frozen
    before = state_snapshot(model)
    images = torch.randint(0, 256, (10, 3, 12, 12), dtype=torch.uint8)
    feats = extract_features(model, images, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], size=8, batch_size=4)
    assert feats.shape == (10, 8) and feats.dtype == torch.float32
    assert_unchanged(model, before)  # BN running stats untouched: it ran in eval mode
    assert model.training and not model.body[1].training and model.body[0].training

    model.eval()
    x = torch.nn.functional.interpolate(images.float() / 255, size=(8, 8), mode="bilinear", align_corners=False)
    with torch.no_grad():
        expected = model((x - 0.5) / 0.25).flatten(1)
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-5)


def test_an_encoder_without_weights_computes_where_its_images_are() -> None:
    # The pixel floor has no parameters: its features must come from the images' device (a CUDA run's GPU), not
    # from a copy to the host. The meta device stands in for a second device on a CPU-only machine.
    images = torch.empty(4, 3, 8, 8, dtype=torch.uint8, device="meta")
    assert _device_of(pixel_encoder(), images) == torch.device("meta")
    assert _device_of(nn.Linear(2, 2), images) == torch.device("cpu")  # one with weights: theirs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the copy back to the host is CUDA's")
def test_features_of_cuda_images_are_those_of_the_same_images_on_the_host() -> None:
    # Regression: the host copy was made with non_blocking=True and read before it had arrived, so the raw-pixel
    # floor of CUDA runs moved from cell to cell. A long queued kernel delays the copy, as training does.
    images = torch.randint(0, 256, (4096, 3, 28, 28), dtype=torch.uint8)
    host = extract_features(pixel_encoder(), images, [0.5] * 3, [0.25] * 3, size=16, batch_size=512)
    a = torch.randn(4096, 4096, device="cuda")
    for device in ("cuda", "cpu"):  # the pixel floor on the GPU, and a host encoder fed CUDA images
        _ = [a @ a for _ in range(8)]
        feats = extract_features(pixel_encoder(), images.cuda(), [0.5] * 3, [0.25] * 3, size=16, batch_size=512,
                                 device=device)
        torch.testing.assert_close(feats.cpu(), host, rtol=1e-5, atol=1e-5)


def test_extract_features_rejects_float_images() -> None:
    with pytest.raises(DataError, match="uint8"):
        extract_features(_Tiny(), torch.rand(2, 3, 8, 8), [0.5] * 3, [0.5] * 3, size=None)


def test_assert_unchanged_detects_a_change() -> None:
    model = nn.Linear(3, 2)
    before = state_snapshot(model)
    with torch.no_grad():
        model.bias.add_(1.0)
    with pytest.raises(AssertionError, match="bias"):
        assert_unchanged(model, before)
