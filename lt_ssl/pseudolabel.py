"""Pseudo-labels from pixels: a denoising autoencoder's latent codes clustered by k-means (G-SimCLR, step 1).

    x in [0, 1]  (uint8 / 255, not normalised: the decoder ends in a sigmoid)
    x~ = x + sigma * eps,  eps ~ N(0, I)             Gaussian corruption, training only
    L_DAE = mean over B, C, H, W of (g(f(x~)) - x)^2  MSE reconstruction of the clean image
    code(x) = global average pool of f(x)             (B, C_latent), no noise
    pseudo-label = k-means(code, K)

Where each choice comes from (reference: ariG23498/G-SimCLR, CIFAR10/Autoencoder.ipynb and
SimCLR_Pseudo_Labels_Training.ipynb):
- the architecture: three conv3x3-BN-ReLU-maxpool blocks of 32, 64, 128 channels, then upsample-conv3x3-BN-ReLU
  blocks of 128, 64, 32 channels and a conv3x3 + sigmoid to the image channels (the reference's "shallow"
  fully convolutional autoencoder); upsampling here goes back to each encoder size exactly, so any image side
  works (the reference's x2 steps need a side divisible by 8);
- the noise: Keras GaussianNoise(stddev=1e-2) on pixels in [0, 1], additive, not clipped, only while training;
- the optimiser: Adam at Keras' default lr 1e-3, batch 64, MSE;
- the code: the last pooling layer ("retrieval") globally average-pooled, as the reference does before k-means;
- K = 64: the paper's choice (the reference calls KMeans(n_clusters=BATCH_SIZE) with batch 64), k-means with
  sklearn's defaults then (10 starts, 300 iterations).
Our choice: a fixed number of DAE epochs (`dae_epochs`). The reference trains up to 100 epochs with early
stopping on the test set's loss (patience 2), which would let the test set choose the training length.
"""

from __future__ import annotations

import sys
import time
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from .errors import ConfigError
from .schema import Float, Section

KMEANS_N_INIT = 10  # sklearn's KMeans default in the reference's version
KMEANS_MAX_ITER = 300
WIDTHS = (32, 64, 128)  # the reference's encoder channels; the decoder mirrors them


class PseudoLabelConfig(Section):
    """The pseudolabel stage's settings. A method whose needs_stages has "pseudolabel" derives its config from this."""

    pseudo_k: int = Field(64, ge=1)  # number of pseudo-labels (k-means clusters of the codes); paper: 64
    dae_noise_std: Float = Field(0.01, ge=0)  # std of the additive Gaussian noise, in pixel units of [0, 1]; reference 1e-2
    dae_epochs: int = Field(20, ge=1)  # our choice: the reference stops early on the test loss (at most 100)
    dae_batch_size: int = Field(64, ge=2)  # reference: 64
    dae_lr: Float = Field(1e-3, gt=0)  # Adam step size; Keras' default, which the reference uses
    tsne_points: int = Field(2000, ge=2)  # codes (a seeded sample) drawn in the t-SNE plot; t-SNE is O(N^2)


def settings(method_configs: Sequence[Section]) -> PseudoLabelConfig:
    """The pseudo-label settings of a run: those of its method configs that carry them, which must agree."""
    found = [m for m in method_configs if isinstance(m, PseudoLabelConfig)]
    if not found:
        raise ConfigError("no method of this run uses pseudo-labels; the pseudolabel stage has nothing to do")
    values = [{k: getattr(m, k) for k in PseudoLabelConfig.model_fields} for m in found]
    if any(v != values[0] for v in values[1:]):
        diff = sorted(k for k in values[0] if any(v[k] != values[0][k] for v in values))
        raise ConfigError(f"method and baseline.method ask for different pseudo-labels ({', '.join(diff)} differ); "
                          "set them equal: the run computes one set")
    return PseudoLabelConfig(**values[0])


class DenoisingAutoencoder(nn.Module):
    """Fully convolutional: (B, C, H, W) in [0, 1] -> reconstruction (B, C, H, W) in (0, 1); any C, H, W."""

    def __init__(self, channels: int, widths: Sequence[int] = WIDTHS):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        ins = (channels, *widths[:-1])
        self.down = nn.ModuleList(block(i, o) for i, o in zip(ins, widths))
        outs = tuple(reversed(widths))  # 128, 64, 32: the reference's decoder widths
        self.up = nn.ModuleList(block(i, o) for i, o in zip((widths[-1], *outs[:-1]), outs))
        self.out = nn.Conv2d(outs[-1], channels, 3, padding=1)
        self.code_dim = widths[-1]

    def encode(self, x: Tensor) -> tuple[Tensor, list[tuple[int, int]]]:
        """(B, C, H, W) -> latent map (B, code_dim, H/8, W/8) and the sizes before each pooling."""
        sizes = []
        for block in self.down:
            x = block(x)
            sizes.append(tuple(x.shape[-2:]))
            x = F.max_pool2d(x, 2)
        return x, sizes

    def forward(self, x: Tensor) -> Tensor:
        z, sizes = self.encode(x)
        for block, size in zip(self.up, reversed(sizes)):
            z = block(F.interpolate(z, size=size, mode="nearest"))  # Keras' UpSampling2D is nearest-neighbour
        return torch.sigmoid(self.out(z))

    def code(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, code_dim): the latent map globally average-pooled."""
        return self.encode(x)[0].mean(dim=(2, 3))


def to_unit(images: Tensor) -> Tensor:
    """uint8 (B, C, H, W) -> float in [0, 1], the autoencoder's input and target."""
    return images.float() / 255.0


def add_noise(x: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """x + std * eps, eps ~ N(0, I) drawn from `generator` (on x's device). x: (B, C, H, W) -> same shape."""
    return x + std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def dae_loss(model: DenoisingAutoencoder, x: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """Mean squared error between the reconstruction of the corrupted x and the clean x. x: (B, C, H, W) -> scalar."""
    return F.mse_loss(model(add_noise(x, std, generator)), x)


def train_dae(images: Tensor, cfg: PseudoLabelConfig, seed: int, name: str = "pseudolabel") -> tuple[DenoisingAutoencoder, list[float]]:
    """Train a DAE on images: uint8 (N, C, H, W) on the training device. Returns the model (eval mode) and the
    mean loss of each epoch. Deterministic for a seed: init, shuffles and noise are keyed by it.

    No mid-stage checkpoints: a small conv net for a few epochs (seconds on the digits, minutes on CIFAR on a
    GPU), so a killed pseudolabel stage reruns from the start; the stage as a whole resumes as done."""
    device = images.device
    n = images.shape[0]
    batch = min(cfg.dae_batch_size, n)
    torch.manual_seed(seed)
    model = DenoisingAutoencoder(images.shape[1]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.dae_lr)
    noise = torch.Generator(device=device).manual_seed(seed)
    model.train()
    losses = []
    t0 = time.perf_counter()
    for epoch in range(cfg.dae_epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).to(device)
        total = 0.0
        steps = n // batch  # drop the ragged last batch, as the reference (drop_remainder=True) and BatchNorm want
        for s in range(steps):
            x = to_unit(images[order[s * batch:(s + 1) * batch]])
            loss = dae_loss(model, x, cfg.dae_noise_std, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        losses.append(total / steps)
        print(f"[{name}] DAE epoch {epoch + 1}/{cfg.dae_epochs} mse {losses[-1]:.5f} "
              f"({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
    return model.eval(), losses


@torch.no_grad()
def latent_codes(model: DenoisingAutoencoder, images: Tensor, batch_size: int = 512) -> Tensor:
    """uint8 (N, C, H, W) -> (N, code_dim) float32 codes of the clean images, in eval mode."""
    model.eval()
    return torch.cat([model.code(to_unit(images[i:i + batch_size])).float() for i in range(0, images.shape[0], batch_size)])


def tsne_2d(codes: np.ndarray, max_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of at most max_points codes (N, D) embedded in 2-D by t-SNE: (indices (M,), xy (M, 2))."""
    from sklearn.manifold import TSNE

    n = codes.shape[0]
    keep = np.arange(n) if n <= max_points else np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    # Perplexity must stay below the number of points; sklearn's default 30 for all but tiny samples.
    perplexity = min(30.0, max(1.0, (len(keep) - 1) / 3))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        codes[keep].astype(np.float64))
    return keep, xy
