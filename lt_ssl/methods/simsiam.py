"""SimSiam (Chen & He, 2021): a siamese encoder whose predictor matches the other view's stop-gradient projection."""

from __future__ import annotations

from torch import Tensor, nn

from lt_ssl.losses import embedding_std_tensor, simsiam_loss
from lt_ssl.models.heads import simsiam_predictor, simsiam_projector


class SimSiam(nn.Module):
    """backbone -> projector (z) -> predictor (p); loss 0.5*D(p1, z2) + 0.5*D(p2, z1) with stop-grad on z."""

    default_optimizer = "sgd"  # the paper: SGD, momentum 0.9, lr 0.05 * B / 256 (0.03 for CIFAR), cosine decay

    def __init__(self, backbone: nn.Module, proj_dim: int = 2048, pred_hidden: int = 512, proj_layers: int = 3):
        super().__init__()
        self.backbone = backbone
        # The paper's hidden projector width equals its output width (2048).
        self.projector = simsiam_projector(backbone.out_dim, proj_dim, proj_dim, num_layers=proj_layers)
        self.predictor = simsiam_predictor(proj_dim, pred_hidden)

    def forward(self, x1: Tensor, x2: Tensor) -> dict[str, Tensor]:
        """x1, x2: two augmented views (B, 3, H, W) -> {"loss": scalar, "z_std": detached scalar}."""
        # Two passes, not one concatenated batch: BN statistics stay per view, as in the reference code.
        z1 = self.projector(self.backbone(x1))
        z2 = self.projector(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return {"loss": simsiam_loss(p1, p2, z1, z2), "z_std": embedding_std_tensor(z1)}

    def param_groups(self, base_lr: float) -> list[dict]:
        """The encoder group follows the schedule; the predictor keeps base_lr (the paper's fix_pred_lr option)."""
        encoder = [*self.backbone.parameters(), *self.projector.parameters()]
        return [
            {"params": encoder, "lr": base_lr, "fix_lr": False},
            {"params": list(self.predictor.parameters()), "lr": base_lr, "fix_lr": True},
        ]
