"""Backbone encoders mapping images (B, 3, H, W) to features (B, out_dim), built by name."""

from __future__ import annotations

from collections.abc import Callable

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


BACKBONES: dict[str, Callable[[], nn.Module]] = {
    "resnet18_cifar": lambda: _resnet18(cifar_stem=True),
    "resnet18": lambda: _resnet18(cifar_stem=False),
    "small_cnn": SmallCNN,
}


def build_backbone(name: str) -> nn.Module:
    """A freshly initialised backbone; it maps (B, 3, H, W) float to (B, out_dim) and has `out_dim`."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; known backbones: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name]()
