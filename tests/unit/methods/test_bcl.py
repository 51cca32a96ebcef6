"""BCL: the momentum loss and its normalisation against numbers worked out by hand, the loss against NT-Xent
written out, the per-sample extra augmentation (stronger with strength, in range for any image), a digits epoch."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from lt_ssl.config import AugmentConfig, load_config
from lt_ssl.data import augment
from lt_ssl.data.augment import EXTRA_OPS, ExtraOps, augment_batch, extra_ops
from lt_ssl.losses import nt_xent_loss
from lt_ssl.methods import Batch
from lt_ssl.methods.bcl import BCL, momentum_strength, momentum_update
from lt_ssl.models import build_backbone
from lt_ssl.pipeline.stages import run_stage
from lt_ssl.store import open_store
from tests.conftest import QUICKSTART


def _model(**cfg) -> BCL:
    torch.manual_seed(0)
    return BCL(build_backbone("small_cnn"), BCL.Config(proj_dim=4, proj_hidden=8, **cfg))


def _fixed(model: BCL, z1: torch.Tensor, z2: torch.Tensor) -> BCL:
    model.project = lambda batch: (z1, z2)  # the loss's input, fixed: these tests are about the formulas
    return model


def _batch(idx: list[int]) -> Batch:
    return Batch([torch.zeros(len(idx), 3, 8, 8)] * 2, torch.tensor(idx), epoch=0, step=0, total_steps=1)


def _view_terms(z1: np.ndarray, z2: np.ndarray, t: float) -> list[float]:
    """NT-Xent written out: -log(exp(s(v, v+)/t) / sum_{k != v} exp(s(v, k)/t)) for each of the 2B views."""
    b = len(z1)
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    terms = []
    for v in range(2 * b):
        denom = sum(math.exp(z[v] @ z[k] / t) for k in range(2 * b) if k != v)
        terms.append(-math.log(math.exp(z[v] @ z[(v + b) % (2 * b)] / t) / denom))
    return terms


def test_momentum_update_by_hand():
    shadow, seen = torch.tensor([2.0, 1.0, 0.0]), torch.tensor([True, True, False])
    got = momentum_update(shadow, seen, torch.tensor([1.0, 3.0, 5.0]), beta=0.9)
    # 0.9 * 2 + 0.1 * 1 = 1.9; 0.9 * 1 + 0.1 * 3 = 1.2; never seen: the loss itself
    assert torch.allclose(got, torch.tensor([1.9, 1.2, 5.0]))


def test_strengths_by_hand():
    # m = [1, 2, 3, 6]: mean 3, centred [-2, -1, 0, 3]; z = centred / std and z / max|z| = centred / 3
    # -> w = [-2/3, -1/3, 0, 1] / 2 + 1/2 = [1/6, 1/3, 1/2, 1]; the unseen fifth sample gets 1/2.
    shadow = torch.tensor([1.0, 2.0, 3.0, 6.0, 9.0])
    seen = torch.tensor([True, True, True, True, False])
    assert torch.allclose(momentum_strength(shadow, seen), torch.tensor([1 / 6, 1 / 3, 1 / 2, 1.0, 1 / 2]))
    # equal losses, or a single one: nobody is harder than anybody else
    assert torch.equal(momentum_strength(torch.full((4,), 2.5), torch.ones(4, dtype=torch.bool)), torch.full((4,), 0.5))
    assert torch.equal(momentum_strength(torch.tensor([4.0, 0.0]), torch.tensor([True, False])), torch.full((2,), 0.5))


def test_loss_is_nt_xent_and_the_momentum_loss_follows_the_per_sample_terms():
    g = torch.Generator().manual_seed(3)
    model = _model(momentum=0.9)
    model.on_train_start(5)
    z1, z2 = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    out = _fixed(model, z1, z2).loss(_batch([4, 0, 2]))
    terms = _view_terms(z1.numpy(), z2.numpy(), 0.2)
    assert out["loss"].item() == pytest.approx(sum(terms) / 6, rel=1e-5)
    first = [(terms[i] + terms[i + 3]) / 2 for i in range(3)]  # a sample's loss: the mean of its two views' terms
    assert model.shadow.tolist() == pytest.approx([first[1], 0.0, first[2], 0.0, first[0]], rel=1e-5)
    assert model.seen.tolist() == [True, False, True, False, True]
    # Second step, samples 2 (seen: momentum) and 1 (new: its loss).
    y1, y2 = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    _fixed(model, y1, y2).loss(_batch([2, 1]))
    terms = _view_terms(y1.numpy(), y2.numpy(), 0.2)
    second = [(terms[i] + terms[i + 2]) / 2 for i in range(2)]
    assert model.shadow[2].item() == pytest.approx(0.9 * first[2] + 0.1 * second[0], rel=1e-5)
    assert model.shadow[1].item() == pytest.approx(second[1], rel=1e-5)


def test_no_gradient_flows_through_the_statistics():
    g = torch.Generator().manual_seed(4)
    z1 = torch.randn(4, 3, generator=g).requires_grad_()
    z2 = torch.randn(4, 3, generator=g).requires_grad_()
    model = _fixed(_model(), z1, z2)
    model.on_train_start(4)
    model.loss(_batch([0, 1, 2, 3]))  # fills the momentum loss, so the second call has statistics to leak
    model.on_epoch_end(0)
    model.loss(_batch([0, 1, 2, 3]))["loss"].backward()
    assert not model.shadow.requires_grad and not model.strength.requires_grad
    a, b = z1.detach().clone().requires_grad_(), z2.detach().clone().requires_grad_()
    nt_xent_loss(a, b, 0.2).backward()  # plain SimCLR: the statistics only steer the augmentation
    assert torch.allclose(z1.grad, a.grad, atol=1e-6) and torch.allclose(z2.grad, b.grad, atol=1e-6)


def test_strengths_are_zero_until_the_first_epoch_ends_survive_a_checkpoint_and_restart_with_training():
    model = _model()
    model.on_train_start(8)
    assert torch.equal(model.augment_strength(torch.tensor([0, 5])).strength, torch.zeros(2))
    g = torch.Generator().manual_seed(5)
    for idx in ([0, 1, 2], [3, 4, 5]):
        _fixed(model, torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)).loss(_batch(idx))
    model.on_epoch_end(0)
    expected = momentum_strength(model.shadow, model.seen)
    extra = model.augment_strength(torch.tensor([5, 0, 7]))  # 7: never trained on
    assert torch.allclose(extra.strength, torch.stack([expected[5], expected[0], torch.tensor(0.5)]))
    assert (extra.num_ops, extra.max_magnitude) == (1, 1.0)
    assert model.strength.mean().item() == pytest.approx(0.5, abs=1e-6)  # mean(w) = 1/2 by construction
    resumed = _model()
    resumed.load_state_dict(model.state_dict())
    for name in ("shadow", "seen", "strength"):
        assert torch.equal(getattr(resumed, name), getattr(model, name)), name
    # A checkpoint from before 2026-12-04: buffers grown to the largest index seen, new_strength for those beyond.
    old = {k: (v[:6] if k in ("shadow", "seen", "strength") else v) for k, v in model.state_dict().items()}
    older = _model()
    older.on_train_start(8)  # this run's 8 images
    older.load_state_dict(old | {"new_strength": torch.tensor(0.5)})
    assert torch.equal(older.strength, torch.cat([model.strength[:6], torch.full((2,), 0.5)]))
    assert torch.equal(older.seen, torch.cat([model.seen[:6], torch.zeros(2, dtype=torch.bool)]))
    assert torch.equal(older.shadow[:6], model.shadow[:6]) and not older.shadow[6:].any()
    # A new training run (an expert started from these weights) indexes other images: its statistics start over.
    resumed.on_train_start(6)
    assert resumed.shadow.shape == resumed.seen.shape == resumed.strength.shape == (6,) and not resumed.seen.any()
    assert torch.equal(resumed.augment_strength(torch.tensor([5, 0])).strength, torch.zeros(2))
    assert _model(rand_ops=0).augment_strength(torch.tensor([0])) is None


def _digit_like(n: int, channels: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth blobs, not noise: geometric ops and equalisation change a noise image little."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, max(h // 4, 1), max(w // 4, 1), generator=g)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def test_strength_zero_is_the_plain_recipe_and_strength_one_changes_views_most():
    x = (_digit_like(256, 3, 16, 16) * 255).round().to(torch.uint8)
    cfg, mean, std = AugmentConfig(size=16), [0.5] * 3, [0.25] * 3

    def view(strength: float | None) -> torch.Tensor:
        extra = None if strength is None else ExtraOps(torch.full((256,), strength))
        return augment_batch(x, cfg, mean, std, generator=torch.Generator().manual_seed(7), extra=extra)

    plain = view(None)
    assert torch.equal(view(0.0), plain)
    # mean |difference| from the un-augmented view, in [0,1] pixel units (std 0.25 undone)
    change = {s: ((view(s) - plain).abs().mean() * 0.25).item() for s in (0.5, 1.0)}
    assert 0.0 < change[0.5] < change[1.0]
    assert change[1.0] > 0.05  # a quarter of the ops at full strength move whole images, not a few pixels


@pytest.fixture(params=["grouped", "masked"])
def extra_ops_path(request, monkeypatch):
    """Both ways extra_ops runs a round: grouped (CPU) and masked (CUDA's), the latter forced onto the CPU."""
    if request.param == "masked":
        monkeypatch.setattr(augment, "SYNC_FREE_DEVICES", ("cpu",))
    return request.param


@pytest.mark.parametrize("shape", [(128, 1, 16, 16), (128, 3, 16, 16), (128, 1, 5, 7), (128, 3, 32, 24),
                                   (64, 3, 2, 3), (64, 1, 1, 1)])
def test_extra_ops_keep_shape_and_range_for_any_channels_and_size(shape, extra_ops_path):
    x = _digit_like(*shape)
    out = extra_ops(x.clone(), ExtraOps(torch.ones(shape[0]), num_ops=3), torch.Generator().manual_seed(1))
    assert out.shape == shape and out.dtype == torch.float32
    assert out.min().item() >= 0.0 and out.max().item() <= 1.0 and torch.isfinite(out).all()
    assert not torch.equal(out, x)
    # strength 0: untouched, bit for bit
    assert torch.equal(extra_ops(x.clone(), ExtraOps(torch.zeros(shape[0])), torch.Generator().manual_seed(1)), x)


@pytest.mark.parametrize("shape", [(300, 3, 16, 16), (300, 1, 5, 7), (90, 3, 2, 3)])
def test_the_masked_round_gives_the_grouped_rounds_views(shape):
    # The GPU's sync-free round must be the CPU's round, sample by sample: every op drawn, some samples skipped.
    x = _digit_like(*shape, seed=3)
    g = torch.Generator().manual_seed(5)
    op = torch.randint(-1, len(EXTRA_OPS), (shape[0],), generator=g)
    assert set(op.tolist()) == set(range(-1, len(EXTRA_OPS)))
    magnitude, sign, at = torch.rand(shape[0], generator=g), torch.where(torch.rand(shape[0], generator=g) < 0.5, -1.0, 1.0), \
        torch.rand(shape[0], 2, generator=g)
    grouped = augment._grouped_round(x.clone(), op, magnitude, sign, at)
    masked = augment._masked_round(x.clone(), op, magnitude, sign, at)
    torch.testing.assert_close(masked, grouped, rtol=0, atol=1e-6)
    assert torch.equal(masked[op == -1], x[op == -1])


def test_bad_extra_ops_are_refused():
    with pytest.raises(ValueError, match="max_magnitude"):
        ExtraOps(torch.ones(2), max_magnitude=2.0)
    with pytest.raises(ValueError, match=r"\(B,\) strengths"):
        extra_ops(torch.rand(3, 1, 4, 4), ExtraOps(torch.ones(2)))


def test_one_epoch_on_the_quickstart_digits(tmp_path):
    store = open_store(tmp_path.as_uri())
    cfg = load_config(QUICKSTART, ["method.name=bcl", "method.proj_dim=32", "method.proj_hidden=32",
                                   "pretrain.epochs=2", "pretrain.batch_size=64"])
    assert cfg.method.name == "bcl" and cfg.method.momentum == 0.95 and cfg.method.temperature == 0.2
    assert run_stage("prepare", store, cfg) == "done"
    assert run_stage("pretrain", store, None, device="cpu") == "done"
    summary = store.read_json("pretrain/_SUCCESS.json")["summary"]["train"]
    assert summary["epochs"] == 2 and math.isfinite(summary["final_loss"])
    state = torch.load(io.BytesIO(store.read_bytes("pretrain/model.pt")), weights_only=True)["model"]
    # every sample of the subset that a step drew has a momentum loss; 2 epochs of 8 steps of 64 draw >= 512
    assert 512 <= int(state["seen"].sum()) <= state["strength"].numel() <= len(store.read_numpy("prepare/subset.npy"))
    strength = state["strength"]
    assert 0.0 <= strength.min().item() < strength.max().item() <= 1.0
