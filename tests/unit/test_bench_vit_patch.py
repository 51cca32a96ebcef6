"""benchmarks/vit_patch.py runs every setting, counts the tokens right and reports the ratios it prints."""

from __future__ import annotations

from tests.conftest import load_benchmark


def test_vit_patch_benchmark_reports_every_setting_against_vit_tiny_at_28px():
    report = load_benchmark("vit_patch").main(["--batch", "4", "--rounds", "1", "--steps", "1"])
    got = {(s["backbone"], s["side"]): s for s in report["settings"]}
    assert {k: s["tokens"] for k, s in got.items()} == {("vit_tiny", 16): 16, ("vit_tiny", 28): 49,
                                                        ("vit_tiny_p7", 28): 16}
    assert got[("vit_tiny", 28)]["vs_vit_tiny_28px"] == 1.0
    assert all(s["images_per_s"] > 0 for s in got.values())
