"""LoTaR: SimCLR whose per-sample NT-Xent terms are reweighted by how far apart the two views' embeddings are.

    d_i = ||z1_i - z2_i||^2                     z: projector outputs (B, D), not normalised
    w_i = 1 + (d_i - mean(d)) / (max(d) - min(d))   constants: no gradient flows through w; max(d) = min(d) -> w = 1
    loss = 1/(2B) * sum_{v in 1..2B} w_{v mod B} * l_v,   l_v = NT-Xent term of view v (SimCLR)

Since mean(w) = 1 exactly, this is also the w-weighted mean of the per-sample terms. Samples whose views land
far apart (in a long-tailed set: mostly tail samples) weigh more.

Where each choice comes from:
- the weight formula: issue 9 (LoTaR's long-tail reweighting); the reference andrew15818/SimCLR has the same
  min-max normalised deviation from the batch mean (`get_weights` in train.py);
- d_i = squared Euclidean distance between the two views' projector outputs: the reference's `norms`
  (`torch.square(torch.norm(z1 - z2, p=2, dim=1))`, plotted as d_i), on `model(x)` = the projection;
- both views of sample i share w_i, per-view terms averaged over 2B: the reference's
  `mean(CrossEntropy(reduction='none') * cat([w, w]))`;
- temperature 0.3 and projection width 128: the reference's defaults (`--temperature 0.3`, `--proj_hid_dim 128`).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from lt_ssl.losses import embedding_std_tensor, nt_xent_per_view
from lt_ssl.methods.base import Batch, Paper
from lt_ssl.methods.simclr import SimCLR
from lt_ssl.schema import Float, Section


class LoTaRConfig(Section):
    name: Literal["lotar"] = "lotar"
    proj_dim: int = Field(128, ge=1)  # output width of the projection head (reference: 128)
    proj_hidden: int = Field(2048, ge=1)  # hidden width, SimCLR's head (the reference uses 128; ours follows SimCLR)
    temperature: Float = Field(0.3, gt=0)  # NT-Xent temperature, dimensionless (reference default 0.3)


def lotar_weights(d: Tensor) -> Tensor:
    """w_i = 1 + (d_i - mean(d)) / (max(d) - min(d)), detached; all ones when max(d) = min(d). d: (B,) -> (B,).

    "Equal" is up to float32 rounding (relative 1e-5): dividing rounding noise by a spread of the same size would
    turn distances that are equal in exact arithmetic into weights anywhere in [0, 2].
    """
    d = d.detach().float()
    spread = d.max() - d.min()
    equal = spread <= 1e-5 * d.abs().max()
    # torch.where, not `if`: deciding on the host would sync with the GPU every step (benchmarks/ops_per_step.py)
    return torch.where(equal, 1.0, 1 + (d - d.mean()) / spread.clamp_min(torch.finfo(d.dtype).tiny))


class LoTaR(SimCLR):
    """SimCLR's encoder and projection head; the loss is LoTaR's weighted NT-Xent (formula in the module docstring)."""

    Config = LoTaRConfig
    # A master's thesis; its reference repository names neither the title nor the author's name nor a year.
    paper = Paper("LoTaR: long-tail reweighting of SimCLR's NT-Xent (master's thesis, reference code)",
                  "andrew15818 (GitHub)", None, "https://github.com/andrew15818/SimCLR")

    def loss(self, batch: Batch) -> dict:
        z1, z2 = self.project(batch)  # (B, proj_dim) each
        w = lotar_weights((z1.float() - z2.float()).pow(2).sum(dim=1))  # (B,)
        terms = nt_xent_per_view(z1, z2, self.cfg.temperature)  # (2B,)
        return {"loss": (terms * torch.cat([w, w])).mean(), "z_std": embedding_std_tensor(z1), "weights": w}
