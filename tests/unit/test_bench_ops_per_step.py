"""benchmarks/ops_per_step.py counts a step of each grid variant: no method syncs with the host in a step."""

from __future__ import annotations

from tests.conftest import load_benchmark


def test_no_method_of_the_grid_syncs_with_the_host_in_a_step_and_msns_ema_is_two_ops():
    report = load_benchmark("ops_per_step").main(["--batch", "8"])
    rows = report["variants"]
    assert {"SimCLR", "LoTaR", "SDCLR", "BCL", "G-SimCLR", "MSN", "PMSN"} <= set(rows)
    # A sync stalls a GPU's queue every step: BCL's extra ops and buffers, and LoTaR's weights, had them.
    assert {name: row["host_syncs"] for name, row in rows.items()} == {name: 0 for name in rows}
    simclr, bcl, msn = rows["SimCLR"], rows["BCL"], rows["MSN"]
    assert simclr["ops_vs_reference"] == 1.0
    # BCL: SimCLR's network plus every extra op on the whole batch (the CUDA path the script counts)
    assert bcl["backward"] < 1.2 * simclr["backward"] and bcl["augment_forward_loss"] > 2 * simclr["augment_forward_loss"]
    # MSN's target network update: one foreach multiply and one foreach add for all its tensors
    assert msn["after_step"] == 2 and msn["backbone"] == "vit_tiny"
    assert all(row["ops"] == sum(row[p] for p in ("augment_forward_loss", "backward", "optimizer", "after_step"))
               for row in rows.values())


def test_timing_gives_each_variant_a_rate_and_its_ratio_to_the_reference():
    report = load_benchmark("ops_per_step").main(["--batch", "8", "--variants", "BCL", "--time", "cpu",
                                                  "--steps", "1", "--rounds", "1"])
    assert report["timed"]["device"].startswith("cpu") and set(report["variants"]) == {"SimCLR", "BCL"}
    assert report["variants"]["SimCLR"]["rate_vs_reference"] == 1.0
    assert all(row["images_per_s"] > 0 for row in report["variants"].values())
