"""The distilled student: one encoder regressing the frozen base model and each image's own cluster expert."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lt_ssl.losses import distill_loss
from lt_ssl.models.heads import regression_head


class DistillStudent(nn.Module):
    """Student encoder plus num_heads = K + 1 regression heads: head 0 -> base model, head k + 1 -> expert k."""

    def __init__(self, backbone: nn.Module, num_heads: int, target_dim: int, hidden_dim: int):
        super().__init__()
        if num_heads < 2:
            raise ValueError(f"num_heads must be K + 1 >= 2 (base head plus one per expert), got {num_heads}")
        self.backbone = backbone
        self.heads = nn.ModuleList(regression_head(backbone.out_dim, hidden_dim, target_dim) for _ in range(num_heads))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, 3, H, W) -> (student features (B, D), every head's prediction (num_heads, B, target_dim))."""
        q = self.backbone(x)
        # Every head sees the whole batch (num_heads small matmuls), so each head's BN uses full-batch statistics
        # and the per-image choice below is a gather instead of a loop over images.
        return q, torch.stack([head(q) for head in self.heads])

    def loss(self, x: Tensor, cluster_ids: Tensor, target_base: Tensor, target_expert: Tensor) -> Tensor:
        """0.5*MSE(head 0, base) + 0.5*MSE(head 1 + c_i, expert c_i) for each image i.

        x: (B, 3, H, W); cluster_ids: (B,) long in [0, K); target_base, target_expert: (B, target_dim), where
        target_expert[i] is the features of image i under the expert of its own cluster cluster_ids[i].
        """
        num_experts = len(self.heads) - 1
        if cluster_ids.shape != (x.shape[0],):
            raise ValueError(f"cluster_ids must have shape ({x.shape[0]},), got {tuple(cluster_ids.shape)}")
        if cluster_ids.min() < 0 or cluster_ids.max() >= num_experts:
            # Out-of-range indices would be a device-side assert on GPU; fail with a readable message instead.
            raise ValueError(
                f"cluster_ids must lie in [0, {num_experts}), got range "
                f"[{int(cluster_ids.min())}, {int(cluster_ids.max())}]"
            )
        _, preds = self(x)
        rows = torch.arange(x.shape[0], device=x.device)
        pred_expert = preds[cluster_ids + 1, rows]  # (B, target_dim): image i's own expert head
        return distill_loss(preds[0], target_base, pred_expert, target_expert)

    def param_groups(self, base_lr: float) -> list[dict]:
        """One scheduled group with every parameter."""
        return [{"params": list(self.parameters()), "lr": base_lr, "fix_lr": False}]
