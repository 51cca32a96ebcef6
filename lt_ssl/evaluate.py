"""Evaluation of a trained encoder: feature extraction, weighted kNN, linear probes (on the backbone and along the
projection head), a fine-tune with a fraction of the labels, and many/medium/few accuracy."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lt_ssl.errors import ConfigError, DataError
from lt_ssl.progress import Progress


def _check_images(images: Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        got = f"{images.dtype} {tuple(images.shape)}"
        raise DataError(f"images must be uint8 (N, 3, H, W), got {got}; re-prepare the dataset")


def _normaliser(mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor, size: int | None,
                device: torch.device) -> Callable[[Tensor], Tensor]:
    """uint8 (B, 3, H, W) -> float (B, 3, S, S): scaled to [0, 1], resized (bilinear) to size x size when size is
    given and differs, normalised with the per-channel mean/std. What every evaluation feeds its encoder."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    if bool((std_t <= 0).any()):
        raise ConfigError(f"normalisation std {std_t.flatten().tolist()} must be positive; fix the dataset's std")

    def prepare(images: Tensor) -> Tensor:
        # non_blocking only host -> device: a device -> host copy with it returns before the data has arrived, and
        # the CPU ops below would read a half-filled buffer (the raw-pixel floor of CUDA runs did, until 2026-12-04).
        x = images.to(device, non_blocking=images.device.type == "cpu").float().div_(255.0)
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return (x - mean_t) / std_t

    return prepare


def _device_of(module: nn.Module, inputs: Tensor) -> torch.device:
    """Where module computes: its parameters' device, or its inputs' for a parameterless one (the pixel floor), so
    that no evaluation copies a CUDA run's images to the host."""
    param = next(module.parameters(), None)
    return param.device if param is not None else inputs.device


def extract_features(
    backbone: nn.Module,
    images: Tensor,
    mean: Sequence[float] | Tensor,
    std: Sequence[float] | Tensor,
    size: int | None,
    batch_size: int = 512,
    device: torch.device | str | None = None,
) -> Tensor:
    """Features: (N, D) float32 on `device` of images: (N, 3, H, W) uint8, in eval mode and without gradients.

    Each batch is scaled to [0, 1], resized to size x size (bilinear) when size is given and differs, and
    normalised with the per-channel mean/std. device defaults to the backbone's (the images' for one without
    weights); bf16 autocast is used on CUDA.
    Every submodule's train/eval mode is restored afterwards.
    """
    _check_images(images)
    if batch_size < 1:
        raise ConfigError(f"feature batch_size={batch_size} must be at least 1; raise it")
    device = torch.device(device) if device is not None else _device_of(backbone, images)
    prepare = _normaliser(mean, std, size, device)

    # Remember each submodule's mode: a caller may keep, say, a frozen BN in eval inside a training model.
    modes = {m: m.training for m in backbone.modules()}
    backbone.eval()
    chunks = []
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"), \
                Progress(images.shape[0], "features") as bar:
            for start in range(0, images.shape[0], batch_size):
                x = prepare(images[start : start + batch_size])
                # flatten(1) so backbones that end in (B, D, 1, 1) pooling give (B, D) too.
                chunks.append(backbone(x).flatten(1).float())
                bar.update(x.shape[0])
    finally:
        for module, training in modes.items():
            module.train(training)
    if not chunks:
        raise DataError("no images to extract features from; check the dataset split")
    return torch.cat(chunks)


@torch.no_grad()
def knn_predict(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """Predicted classes: (M,) long for test_feats: (M, D) from train_feats: (N, D), train_labels: (N,).

    Weighted kNN on cosine similarity (InstDisc; lightly and solo-learn use the same vote): each of the top-k
    neighbours votes for its class with weight exp(sim / temperature). k is clamped to N.
    """
    if temperature <= 0:
        raise ConfigError(f"knn temperature={temperature} must be positive; use e.g. 0.1")
    if k < 1 or chunk_size < 1:
        raise ConfigError(f"knn k={k} and chunk_size={chunk_size} must be at least 1; raise them")
    device = train_feats.device
    labels = _check_labels(train_labels, train_feats.shape[0], num_classes, "train").to(device)
    train = F.normalize(train_feats.float(), dim=1)
    k = min(k, train.shape[0])
    preds = []
    for start in range(0, test_feats.shape[0], chunk_size):
        test = F.normalize(test_feats[start : start + chunk_size].to(device).float(), dim=1)
        sim, idx = (test @ train.T).topk(k, dim=1)  # (B, k)
        # votes[b, c] = sum over the k neighbours of class c of exp(sim / T), as a reduction rather than
        # scatter_add_, whose CUDA kernel adds in a nondeterministic order (torch.use_deterministic_algorithms lists
        # it), so near-tied votes could flip between runs on a GPU (docs/results.md, the H200 methods run).
        weights = (sim / temperature).exp()  # (B, k)
        votes = (F.one_hot(labels[idx], num_classes).to(weights.dtype) * weights.unsqueeze(-1)).sum(dim=1)  # (B, C)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=device)


def fit_linear(
    train_feats: Tensor,
    train_labels: Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 1.0,
    weight_decay: float = 1e-4,
    batch_size: int | None = None,
    seed: int = 0,
) -> nn.Linear:
    """A linear classifier (D -> num_classes) from L2-regularised logistic regression on frozen features: (N, D).

    Features are standardised with the training set's statistics; that standardisation is folded into the
    returned layer, so it takes raw features. The convex objective is minimised with full-batch L-BFGS (strong
    Wolfe line search, step lr) for `epochs` iterations, so the result does not depend on data order; batch_size
    only bounds memory, the loss and gradient are summed over chunks of it. weight_decay is the L2 coefficient
    (penalty weight_decay / 2 * ||W||^2 on the standardised features, bias unpenalised); the seed fixes the
    initial weights.
    """
    weight, bias, mu, sigma = _logistic_regression(train_feats, train_labels, num_classes, epochs, lr, weight_decay,
                                                   batch_size, seed)
    layer = nn.Linear(weight.shape[1], num_classes).to(weight.device)
    with torch.no_grad():  # W (x - mu) / sigma + b = (W / sigma) x + (b - (W / sigma) mu)
        layer.weight.copy_(weight / sigma)
        layer.bias.copy_(bias - (weight / sigma) @ mu)
    return layer


def linear_probe(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 1.0,
    weight_decay: float = 1e-4,
    batch_size: int | None = None,
    seed: int = 0,
) -> Tensor:
    """Predicted classes: (M,) long for test_feats: (M, D) from fit_linear's logistic regression on train_feats.

    The backbone is never touched: callers check that with assert_unchanged.
    """
    weight, bias, mu, sigma = _logistic_regression(train_feats, train_labels, num_classes, epochs, lr, weight_decay,
                                                   batch_size, seed)
    with torch.no_grad():
        test = (test_feats.detach().to(weight.device).float() - mu) / sigma
        return F.linear(test, weight, bias).argmax(dim=1)


def _logistic_regression(train_feats: Tensor, train_labels: Tensor, num_classes: int, epochs: int, lr: float,
                         weight_decay: float, batch_size: int | None, seed: int) -> tuple[Tensor, ...]:
    """fit_linear's optimisation: (weight (C, D), bias (C,)) on standardised features, and their (mu, sigma) (D,)."""
    if epochs < 1 or lr <= 0 or weight_decay < 0:
        got = f"epochs={epochs}, lr={lr}, weight_decay={weight_decay}"
        raise ConfigError(f"linear probe needs epochs >= 1, lr > 0, weight_decay >= 0 (got {got}); fix them")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"linear probe batch_size={batch_size} must be at least 1, or null for full batch")
    device = train_feats.device
    n, dim = train_feats.shape
    labels = _check_labels(train_labels, n, num_classes, "train").to(device)
    x = train_feats.detach().float()
    mu = x.mean(dim=0)
    sigma = x.std(dim=0, unbiased=False).clamp_min(1e-6)  # constant dimensions stay 0 instead of dividing by 0
    x = (x - mu) / sigma
    step = n if batch_size is None else batch_size

    gen = torch.Generator().manual_seed(seed)
    weight = (torch.randn(num_classes, dim, generator=gen) * 0.01).to(device).requires_grad_()
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=lr, max_iter=epochs, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        total = torch.zeros((), device=device)
        for start in range(0, n, step):
            logits = F.linear(x[start : start + step], weight, bias)
            loss = F.cross_entropy(logits, labels[start : start + step], reduction="sum") / n
            loss.backward()
            total += loss.detach()
        penalty = 0.5 * weight_decay * weight.pow(2).sum()
        penalty.backward()
        return total + penalty.detach()

    optimizer.step(closure)  # LBFGS.step re-enables grad inside the closure, so this also works under no_grad
    return weight.detach(), bias.detach(), mu, sigma


def head_features(layers: Sequence[nn.Module], feats: Tensor, batch_size: int = 512) -> list[Tensor]:
    """Features after each projection-head layer: [(N, D_1), ..., (N, D_L)] for backbone features feats: (N, D_0).

    layers are a method's projection_layers() (each a Linear with the normalisation/activation after it); they run
    in eval mode (BatchNorm on its running statistics) without gradients, and their modes are restored afterwards.
    """
    if batch_size < 1:
        raise ConfigError(f"feature batch_size={batch_size} must be at least 1; raise it")
    head = nn.Sequential(*layers)
    modes = {m: m.training for m in head.modules()}
    head.eval()
    outs: list[list[Tensor]] = [[] for _ in layers]
    device = _device_of(head, feats)
    try:
        with torch.no_grad():
            for start in range(0, feats.shape[0], batch_size):
                h = feats[start : start + batch_size].to(device).float()
                for i, layer in enumerate(layers):
                    h = layer(h)
                    outs[i].append(h.flatten(1).float())
    finally:
        for module, training in modes.items():
            module.train(training)
    return [torch.cat(chunks) for chunks in outs]


def finetune(
    backbone: nn.Module,
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    mean: Sequence[float] | Tensor,
    std: Sequence[float] | Tensor,
    size: int | None,
    *,
    epochs: int = 35,
    lr: float = 1e-5,
    batch_size: int = 64,
    linear_epochs: int = 100,
    linear_lr: float = 1.0,
    linear_weight_decay: float = 1e-4,
    feature_batch_size: int = 512,
    seed: int = 0,
) -> nn.Sequential:
    """A copy of backbone with a linear classifier on top, both trained on labelled images: (N, 3, H, W) uint8.

    G-SimCLR's semi-supervised protocol (Chakraborty et al. 2020, ariG23498/G-SimCLR Fine_Tune_10_Perc.ipynb):
    1. warm-up: the linear layer alone on the frozen encoder's features (fit_linear with the linear_* settings,
       to convergence; the reference runs Adam until early stopping on the test loss, which we do not look at);
    2. fine-tune: encoder and linear layer together, cross-entropy, Adam at lr (reference: 1e-5, batch 64,
       35 epochs), images shuffled by a seeded generator, without augmentation (the reference uses none).
    The encoder stays in eval mode throughout: BatchNorm keeps its running statistics, as the reference's
    `extractor(inputs, training=False)` does; only weights move. The returned model maps images normalised as
    extract_features does to logits (B, num_classes); backbone itself is never modified.
    """
    _check_images(images)
    if epochs < 1 or lr <= 0 or batch_size < 1:
        raise ConfigError(f"fine-tune needs epochs >= 1, lr > 0, batch_size >= 1 (got epochs={epochs}, lr={lr}, "
                          f"batch_size={batch_size}); fix evaluate.finetune")
    encoder = copy.deepcopy(backbone)
    if not any(True for _ in encoder.parameters()):
        raise ConfigError("fine-tune needs an encoder with weights; this one has none (the raw-pixel floor?)")
    device = _device_of(encoder, images)
    labels = _check_labels(labels, images.shape[0], num_classes, "fine-tune").to(device)
    feats = extract_features(encoder, images, mean, std, size, feature_batch_size, device)
    head = fit_linear(feats, labels, num_classes, linear_epochs, linear_lr, linear_weight_decay, seed=seed)
    model = nn.Sequential(encoder, nn.Flatten(), head).eval()
    model.requires_grad_(True)
    prepare = _normaliser(mean, std, size, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    with Progress(epochs * n, "fine-tune") as bar:
        for _ in range(epochs):
            for idx in torch.randperm(n, generator=gen).split(batch_size):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    logits = model(prepare(images[idx]))  # (B, C)
                loss = F.cross_entropy(logits.float(), labels[idx.to(device)])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.update(idx.numel())
    return model.requires_grad_(False)


def pixel_encoder() -> nn.Module:
    """The raw-pixel floor: an "encoder" that returns the flattened images, (B, 3, H, W) -> (B, 3*H*W).

    Passed to extract_features like any backbone, so the pixels are scaled, resized and normalised exactly
    as a trained encoder's inputs are; kNN and the linear probe (logistic regression) then run on them.
    """
    return nn.Flatten()


def state_snapshot(module: nn.Module) -> dict[str, Tensor]:
    """A detached copy of module's state dict, to compare against with assert_unchanged."""
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def assert_unchanged(module: nn.Module, state_before: dict[str, Tensor]) -> None:
    """Raise AssertionError naming the first parameter or buffer of module that differs from state_before."""
    state = module.state_dict()
    if state.keys() != state_before.keys():
        raise AssertionError(f"backbone state keys changed: {sorted(state.keys() ^ state_before.keys())[:5]}")
    for name, value in state.items():
        if not torch.equal(value.detach().cpu(), state_before[name].detach().cpu()):
            raise AssertionError(f"frozen backbone changed during evaluation: {name} differs")


def accuracy_report(preds: Tensor, labels: Tensor, num_classes: int, groups: dict[str, list[int]]) -> dict:
    """{"top1", "per_class": C floats, and one accuracy per group name} for preds, labels: (M,) class ids.

    A group's accuracy is the mean over the test images whose class is in the group (so classes weigh by
    their test count); a group or class with no test images reports NaN.
    """
    labels = _check_labels(labels, labels.shape[0], num_classes, "test").cpu()
    preds = preds.detach().cpu().long()
    if preds.shape != labels.shape:
        raise DataError(f"{preds.shape[0]} predictions for {labels.shape[0]} test labels; re-run the evaluation")
    correct = (preds == labels).double()
    counts = torch.bincount(labels, minlength=num_classes).double()
    hits = torch.bincount(labels, weights=correct, minlength=num_classes)
    report: dict = {
        "top1": float(correct.mean()) if labels.numel() else float("nan"),
        "per_class": (hits / counts).tolist(),  # 0/0 = NaN for classes absent from the test set
    }
    for name, classes in groups.items():
        if any(not 0 <= c < num_classes for c in classes):
            raise ConfigError(f"group {name!r} names classes outside [0, {num_classes}); fix the group split")
        ids = torch.as_tensor(sorted(set(classes)), dtype=torch.long)
        report[name] = float(hits[ids].sum() / counts[ids].sum())
    return report


def _check_labels(labels: Tensor, n: int, num_classes: int, split: str) -> Tensor:
    labels = labels.detach().long()
    if labels.shape != (n,):
        raise DataError(f"{split} labels have shape {tuple(labels.shape)}, expected ({n},); re-prepare the dataset")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(f"{split} labels span [{int(labels.min())}, {int(labels.max())}], outside [0, {num_classes})")
    return labels
