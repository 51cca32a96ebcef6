"""Long-tailed counts and subsets, the balanced-rescaled control, and many/medium/few groups."""

from __future__ import annotations

import numpy as np
import pytest

from lt_ssl.data.longtail import balanced_indices, class_groups, longtail_counts, longtail_indices
from lt_ssl.errors import DataError


@pytest.mark.parametrize(
    ("n_max", "classes", "imbalance", "total"),
    [(5000, 10, 10, 20_431), (5000, 10, 100, 12_406), (500, 100, 100, 10_847)],
)
def test_counts_match_the_literature(n_max: int, classes: int, imbalance: float, total: int) -> None:
    counts = longtail_counts(n_max, classes, imbalance)
    assert sum(counts) == total
    assert counts[0] == n_max and counts[-1] == n_max // imbalance
    assert counts == sorted(counts, reverse=True)


def test_imbalance_one_is_balanced_and_below_one_is_refused() -> None:
    assert longtail_counts(60, 10, 1) == [60] * 10
    with pytest.raises(DataError, match="imbalance must be >= 1"):
        longtail_counts(60, 10, 0.5)


def _labels(per_class: list[int], seed: int = 0) -> np.ndarray:
    labels = np.repeat(np.arange(len(per_class)), per_class)
    return np.random.default_rng(seed).permutation(labels)


def test_longtail_subset_follows_the_profile_with_a_shuffled_class_order() -> None:
    labels = _labels([62, 60, 61, 65, 60, 63, 60, 64, 60, 61])  # n_max is the smallest class: 60
    subset = longtail_indices(labels, imbalance=10, split=0)
    assert subset.dtype == np.int64
    assert np.all(np.diff(subset) > 0)  # sorted and unique
    per_class = np.bincount(labels[subset], minlength=10)
    assert sorted(per_class.tolist(), reverse=True) == longtail_counts(60, 10, 10)
    assert per_class.tolist() != longtail_counts(60, 10, 10)  # class 0 is not simply the head


def test_longtail_subset_is_deterministic_per_split_and_differs_across_splits() -> None:
    labels = _labels([60] * 10)
    again = longtail_indices(labels, 100, split=3)
    np.testing.assert_array_equal(longtail_indices(labels, 100, split=3), again)
    orders = {tuple(np.bincount(labels[longtail_indices(labels, 100, split=s)], minlength=10)) for s in range(3)}
    assert len(orders) == 3


def test_balanced_subset_matches_the_longtail_size_and_is_balanced() -> None:
    labels = _labels([60] * 10)
    lt = longtail_indices(labels, 10, split=1)
    bal = balanced_indices(labels, total=len(lt), seed=1)
    assert len(bal) == len(lt) and len(np.unique(bal)) == len(bal)
    per_class = np.bincount(labels[bal], minlength=10)
    assert per_class.max() - per_class.min() <= 1
    np.testing.assert_array_equal(balanced_indices(labels, len(lt), seed=1), bal)


def test_balanced_subset_too_large_for_a_class_is_refused() -> None:
    with pytest.raises(DataError, match="have fewer"):
        balanced_indices(_labels([5, 50]), total=20, seed=0)


def test_groups_partition_classes_by_count() -> None:
    counts = [50, 500, 200, 200, 5, 80, 1000, 20, 300, 200]
    groups = class_groups(counts)
    assert [len(groups[k]) for k in ("many", "medium", "few")] == [4, 3, 3]
    assert sorted(sum(groups.values(), [])) == list(range(10))
    assert groups["many"] == [1, 2, 6, 8]  # 1000, 500, 300 and the first of the tied 200s
    assert groups["medium"] == [3, 5, 9]
    assert groups["few"] == [0, 4, 7]
    assert [len(v) for v in class_groups(longtail_counts(500, 100, 100)).values()] == [34, 33, 33]
