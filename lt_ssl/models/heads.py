"""MLP heads put on top of a backbone: projectors, the SimSiam predictor and distillation regressors."""

from __future__ import annotations

from torch import nn

from lt_ssl.errors import ConfigError


def simsiam_projector(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 3) -> nn.Sequential:
    """SimSiam projection MLP: (num_layers - 1) x [Linear-BN-ReLU], then Linear-BN(affine=False).

    3 layers as facebookresearch/simsiam's builder.py for ImageNet; the paper uses 2 for CIFAR.
    (B, in_dim) -> (B, out_dim).
    """
    if num_layers < 2:
        raise ConfigError(f"simsiam projector needs num_layers >= 2, got {num_layers}; use 2 (CIFAR) or 3 (ImageNet)")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    # No bias before the output BN: BN subtracts the mean, so a bias would do nothing (builder.py freezes it).
    layers += [nn.Linear(dim, out_dim, bias=False), nn.BatchNorm1d(out_dim, affine=False)]
    return nn.Sequential(*layers)


def _two_layer_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    # No bias before BN: BN subtracts the batch mean, so the bias would be a dead parameter.
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


def simsiam_predictor(dim: int, hidden_dim: int) -> nn.Sequential:
    """SimSiam bottleneck predictor Linear-BN-ReLU-Linear; hidden_dim = dim / 4 in the paper. (B, dim) -> (B, dim)."""
    return _two_layer_mlp(dim, hidden_dim, dim)


def simclr_projector(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """SimCLR projection head Linear-BN-ReLU-Linear (BN as in SimCLR's own code). (B, in_dim) -> (B, out_dim)."""
    return _two_layer_mlp(in_dim, hidden_dim, out_dim)


def mlp_layers(mlp: nn.Sequential) -> list[nn.Sequential]:
    """An MLP head cut into its layers: each Linear with the modules after it up to the next Linear.

    simsiam_projector(..., num_layers=2) -> [Linear-BN-ReLU, Linear-BN]; simclr_projector -> [Linear-BN-ReLU, Linear].
    The pieces share the head's modules (views, not copies), so they carry its trained weights.
    """
    layers: list[list[nn.Module]] = []
    for module in mlp:
        if isinstance(module, nn.Linear) or not layers:
            layers.append([])
        layers[-1].append(module)
    return [nn.Sequential(*group) for group in layers]


def regression_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Distillation head Linear-BN-ReLU-Linear regressing a teacher's features. (B, in_dim) -> (B, out_dim)."""
    return _two_layer_mlp(in_dim, hidden_dim, out_dim)
