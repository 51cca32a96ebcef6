"""The distillation student: head 0 regresses the base model, head 1 + c the expert of each image's cluster c."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lt_ssl.methods import DistillStudent
from lt_ssl.models import build_backbone

K, T, B = 3, 10, 8


def _student() -> DistillStudent:
    torch.manual_seed(0)
    return DistillStudent(build_backbone("small_cnn"), num_heads=K + 1, target_dim=T, hidden_dim=16)


def test_forward_shapes():
    q, preds = _student()(torch.randn(B, 3, 16, 16))
    assert q.shape == (B, 256)
    assert preds.shape == (K + 1, B, T)


@pytest.mark.parametrize("side", [16, 28])
def test_a_vit_student_carries_the_k_plus_1_heads_and_trains(side):
    torch.manual_seed(0)
    student = DistillStudent(build_backbone("vit_tiny"), num_heads=K + 1, target_dim=T, hidden_dim=16)
    x = torch.randn(B, 3, side, side)
    q, preds = student(x)
    assert q.shape == (B, student.backbone.out_dim) and preds.shape == (K + 1, B, T)
    student.loss(x, torch.arange(B) % K, torch.randn(B, T), torch.randn(B, T)).backward()
    assert student.backbone.patch_embed.weight.grad is not None


def test_loss_gathers_each_images_own_expert_head():
    student = _student().eval()  # eval: BN uses running stats, so the per-image loop below sees the same function
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, 3, 16, 16, generator=g)
    cluster_ids = torch.tensor([0, 2, 1, 2, 0, 0, 1, 2])
    target_base, target_expert = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)

    loss = student.loss(x, cluster_ids, target_base, target_expert)

    # Reference: one image at a time, picking that image's expert head by hand.
    base_err, expert_err = 0.0, 0.0
    with torch.no_grad():
        for i in range(B):
            q = student.backbone(x[i : i + 1])
            base_err += F.mse_loss(student.heads[0](q)[0], target_base[i], reduction="sum")
            head = student.heads[1 + int(cluster_ids[i])]
            expert_err += F.mse_loss(head(q)[0], target_expert[i], reduction="sum")
    ref = 0.5 * base_err / (B * T) + 0.5 * expert_err / (B * T)
    assert loss.item() == pytest.approx(float(ref), rel=1e-5)


def test_loss_trains_only_the_heads_in_use():
    student = _student()
    x = torch.randn(B, 3, 16, 16)
    cluster_ids = torch.zeros(B, dtype=torch.long)  # every image in cluster 0: only heads 0 and 1 are used
    student.loss(x, cluster_ids, torch.randn(B, T), torch.randn(B, T)).backward()
    for k, head in enumerate(student.heads):
        used = any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
        assert used == (k in (0, 1)), k


@pytest.mark.parametrize("bad", [torch.tensor([0, 1, 2, 3, 0, 0, 0, 0]), torch.tensor([-1, 0, 0, 0, 0, 0, 0, 0])])
def test_out_of_range_cluster_ids(bad):
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        _student().loss(torch.randn(B, 3, 16, 16), bad, torch.randn(B, T), torch.randn(B, T))


def test_shape_errors():
    student = _student()
    with pytest.raises(ValueError, match="cluster_ids"):
        ids = torch.zeros(B, 1, dtype=torch.long)
        student.loss(torch.randn(B, 3, 16, 16), ids, torch.randn(B, T), torch.randn(B, T))
    with pytest.raises(ValueError, match=r"\(8, 10\)"):
        student.loss(torch.randn(B, 3, 16, 16), torch.zeros(B, dtype=torch.long), torch.randn(B, T), torch.randn(B, 5))
    with pytest.raises(ValueError, match="num_heads"):
        DistillStudent(build_backbone("small_cnn"), num_heads=1, target_dim=T, hidden_dim=16)
