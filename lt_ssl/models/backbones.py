"""Backbone encoders mapping images (B, 3, H, W) to features (B, out_dim), built by name."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from lt_ssl.errors import ConfigError


def _resnet18(cifar_stem: bool) -> nn.Module:
    # Imported here: torchvision pulls in torch._dynamo, sympy and triton, seconds of every stage process's start
    # (benchmarks/pipeline.py), which runs on the small CNN need not pay.
    from torchvision.models import resnet18

    # zero_init_residual starts each block as the identity, as facebookresearch/simsiam's builder does.
    net = resnet18(weights=None, zero_init_residual=True)
    if cifar_stem:
        # 32x32 inputs: a 7x7 stride-2 conv plus max-pool would shrink them to 8x8 before the first block,
        # so use a 3x3 stride-1 conv and no pool (the CIFAR variant of SimCLR, SimSiam and solo-learn).
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()  # features are taken after the global average pool
    net.out_dim = 512
    return net


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU layers (32-64-128-256 channels, two stride-2 steps) and a global pool, for CPU runs."""

    out_dim = 256

    def __init__(self) -> None:
        super().__init__()
        # 16x16 -> 16 -> 8 -> 4 -> 4: about 7 M multiply-adds per 16x16 image, seconds per epoch on 2 cores.
        self.features = nn.Sequential(
            _conv_bn_relu(3, 32, stride=1),
            _conv_bn_relu(32, 64, stride=2),
            _conv_bn_relu(64, 128, stride=2),
            _conv_bn_relu(128, 256, stride=1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def sincos_position_embedding(grid_h: int, grid_w: int, dim: int) -> Tensor:
    """Fixed 2-D sine-cosine position embedding (MAE / I-JEPA): (grid_h * grid_w, dim), row-major patch order.

    Half the channels encode the row, half the column; each half is [sin(pos * w_i), cos(pos * w_i)] with
    w_i = 10000^(-i / (dim / 4)), i < dim / 4.
    """
    if dim % 4:
        raise ValueError(f"a 2-D sine-cosine embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64),
                                indexing="ij")

    def encode(pos: Tensor) -> Tensor:
        angles = pos.flatten()[:, None] * omega[None]  # (N, dim / 4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


class ViT(nn.Module):
    """A Vision Transformer (pre-norm blocks, [CLS] token) whose features are the final-norm [CLS] token.

    The position embedding is the fixed 2-D sine-cosine one, made for the grid of each input's size, so one
    model takes 16, 28 or 32 px images (any side divisible by patch_size) with nothing sized at build time.
    forward(x, keep) runs only the patch tokens listed in `keep` (patch indices, row-major): masked methods
    (MSN) drop the other patches before the blocks, as facebookresearch/msn's deit.py does.
    """

    def __init__(self, patch_size: int, dim: int, depth: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.out_dim = dim
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=mlp_ratio * dim, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self._pos: dict[tuple[int, int], Tensor] = {}  # grid -> embedding, a cache, not state
        nn.init.trunc_normal_(self.cls_token, std=0.02)  # DeiT's initialisation (msn's deit.py)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def num_patches(self, height: int, width: int) -> int:
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"image side {height}x{width} is not divisible by the ViT patch size {p}; "
                             f"choose augment.size as a multiple of {p}")
        return (height // p) * (width // p)

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """x: (B, 3, H, W); keep: optional (n,) long patch indices to run -> (B, out_dim)."""
        self.num_patches(x.shape[-2], x.shape[-1])  # checks divisibility
        tokens = self.patch_embed(x)  # (B, dim, H/p, W/p)
        grid = (tokens.shape[-2], tokens.shape[-1])
        if grid not in self._pos or self._pos[grid].device != x.device:
            self._pos[grid] = sincos_position_embedding(*grid, self.out_dim).to(x.device)
        tokens = tokens.flatten(2).transpose(1, 2) + self._pos[grid]  # (B, N, dim)
        if keep is not None:
            tokens = tokens[:, keep]
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        return self.norm(self.blocks(tokens))[:, 0]


def _vit_tiny(patch_size: int) -> ViT:
    # DeiT-Tiny's width and heads (192, 3) at a third of its depth (4 of 12 blocks) so it trains on 2 CPU cores.
    return ViT(patch_size=patch_size, dim=192, depth=4, heads=3)


# The ViTs: their forward takes `keep` (the patch tokens to keep), which a Method with masks_patches needs.
_VITS: dict[str, Callable[[], nn.Module]] = {
    "vit_tiny": lambda: _vit_tiny(4),  # 4x4, 7x7 and 8x8 grids on 16, 28 and 32 px images
    # 28 px (Fashion-MNIST's own size) as a 4x4 grid: vit_tiny's 16 tokens at 16 px, so 28 px images train at
    # about 16 px's cost (2.66x vit_tiny's 28 px speed, benchmarks/vit_patch.py) while a 9 px detail (PMSN's
    # pasted digit) still spans a few patches.
    "vit_tiny_p7": lambda: _vit_tiny(7),
}
BACKBONES: dict[str, Callable[[], nn.Module]] = {
    "resnet18_cifar": lambda: _resnet18(cifar_stem=True),
    "resnet18": lambda: _resnet18(cifar_stem=False),
    "small_cnn": SmallCNN,
    **_VITS,
}
PATCH_BACKBONES = frozenset(_VITS)


def build_backbone(name: str) -> nn.Module:
    """A freshly initialised backbone; it maps (B, 3, H, W) float to (B, out_dim) and has `out_dim`."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; known backbones: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name]()
