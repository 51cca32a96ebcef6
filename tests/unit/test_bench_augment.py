"""benchmarks/augment.py --bcl-extra-ops times both of extra_ops' rounds and reports their ratio."""

from __future__ import annotations

import pytest

from tests.conftest import load_benchmark


def test_bcl_extra_ops_times_the_grouped_and_the_masked_round():
    out = load_benchmark("augment").extra_ops_rounds(batch=16, size=16, rounds=1)
    assert out["grouped_ms"] > 0 and out["masked_ms"] > 0
    assert out["masked_vs_grouped"] == pytest.approx(out["masked_ms"] / out["grouped_ms"], rel=0.05)
