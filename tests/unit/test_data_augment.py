"""Batched augmentation: shapes, ranges, per-sample randomness, reproducibility and agreement with torchvision."""

from __future__ import annotations


import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from lt_ssl.config import AugmentConfig
from lt_ssl.data import augment as aug
from lt_ssl.data.augment import augment_batch, normalize

ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
ALL_ON = AugmentConfig(blur_p=0.5, solarize_p=0.5)
IDENTITY = AugmentConfig(
    crop_scale_min=1.0, crop_ratio_min=1.0, crop_ratio_max=1.0, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0
)


def _images(n: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("cfg", [AugmentConfig(), ALL_ON, ALL_ON.model_copy(update=dict(size=24))])
def test_shape_dtype_and_range(cfg: AugmentConfig) -> None:
    out = augment_batch(_images(16), cfg, ZERO, ONE, _gen())
    assert out.shape == (16, 3, cfg.size, cfg.size) and out.dtype == torch.float32 and out.is_contiguous()
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_normalisation_uses_mean_and_std() -> None:
    mean, std = (0.4914, 0.4822, 0.4465), (0.247, 0.2435, 0.2616)
    raw = augment_batch(_images(), ALL_ON, ZERO, ONE, _gen(1))
    normed = augment_batch(_images(), ALL_ON, mean, std, _gen(1))
    expected = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(normed, expected)


def test_each_sample_gets_its_own_parameters() -> None:
    x = _images(1).expand(8, -1, -1, -1).contiguous()
    out = augment_batch(x, AugmentConfig(), ZERO, ONE, _gen())
    flat = out.flatten(1)
    assert all(not torch.equal(flat[i], flat[j]) for i in range(8) for j in range(i + 1, 8))


def test_same_seed_same_output_other_seed_other_output() -> None:
    x = _images()
    a = augment_batch(x, ALL_ON, ZERO, ONE, _gen(7))
    assert torch.equal(a, augment_batch(x, ALL_ON, ZERO, ONE, _gen(7)))
    assert not torch.equal(a, augment_batch(x, ALL_ON, ZERO, ONE, _gen(8)))
    assert augment_batch(x, ALL_ON, ZERO, ONE).shape == a.shape  # the global generator works too


def test_full_crop_is_identity_and_flip_p_1_mirrors() -> None:
    x = _images()
    torch.testing.assert_close(augment_batch(x, IDENTITY, ZERO, ONE, _gen()), x / 255.0, atol=1e-6, rtol=0)
    flipped = augment_batch(x, IDENTITY.model_copy(update=dict(flip_p=1.0)), ZERO, ONE, _gen())
    torch.testing.assert_close(flipped, x.flip(-1) / 255.0, atol=1e-6, rtol=0)


def test_resized_crop_matches_torchvision_crop_then_resize() -> None:
    x = _images(3)
    top, left = torch.tensor([0.0, 5.0, 11.0]), torch.tensor([3.0, 0.0, 20.0])
    h, w = torch.tensor([32.0, 17.0, 9.0]), torch.tensor([20.0, 31.0, 12.0])
    flip = torch.tensor([False, True, False])
    gain = torch.tensor([1.0, 1.0, 1.3])  # brightness rides on the resampling
    ours, _ = aug._resized_crop(x, top, left, h, w, flip, gain, 24)
    for i in range(3):
        ref = TF.resized_crop(x[i] / 255.0, int(top[i]), int(left[i]), int(h[i]), int(w[i]), [24, 24], antialias=False)
        ref = TF.adjust_brightness(ref.flip(-1) if flip[i] else ref, float(gain[i]))
        torch.testing.assert_close(ours[i], ref, atol=1e-5, rtol=0)


def test_crop_boxes_follow_scale_and_ratio_and_fall_back_to_the_centre() -> None:
    u = torch.rand(4000, aug._NUM_DRAWS, generator=_gen())
    cfg = AugmentConfig()
    top, left, h, w = aug._crop_boxes(u, 32, 32, cfg)
    assert bool((top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all())
    area = h * w / 1024
    assert area.min() > 0.15 and area.max() <= 1.0 and area.mean() > 0.5  # scale U[0.2, 1], rounded to pixels
    assert float((w / h).min()) > 0.6 and float((w / h).max()) < 1.5
    impossible = cfg.model_copy(update=dict(crop_scale_min=0.9, crop_ratio_min=4.0, crop_ratio_max=5.0))
    top, left, h, w = aug._crop_boxes(u[:5], 32, 32, impossible)
    assert w.tolist() == [32.0] * 5 and h.tolist() == [8.0] * 5 and top.tolist() == [12.0] * 5


def test_colour_jitter_matches_torchvision_in_its_fixed_order() -> None:
    x = _images(2)
    cfg = IDENTITY.model_copy(update=dict(jitter_p=0.8))
    u = torch.zeros(2, aug._NUM_DRAWS)
    u[:, aug._JITTER] = torch.tensor([0.1, 0.95])  # jitter the first sample only
    u[:, aug._BRIGHT], u[:, aug._CONTRAST], u[:, aug._SATUR], u[:, aug._HUE] = 0.75, 0.25, 0.9, 0.8
    jitter = u[:, aug._JITTER] < cfg.jitter_p
    gain = aug._jitter_factor(u[:, aug._BRIGHT], cfg.brightness, jitter)
    top, left, h, w = aug._crop_boxes(u, 32, 32, cfg)
    ours, scratch = aug._resized_crop(x, top, left, h, w, torch.tensor([False, False]), gain, 32)
    aug._color_jitter_(ours, u, jitter, cfg, scratch)
    # factors: lo + (1 + s - lo) * u with lo = 0.6: brightness 1.2, contrast 0.8, saturation 1.32; hue 0.1 * 0.6
    img = x[0] / 255.0
    ref = TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(img, 1.2), 0.8), 1.32), 0.06)
    torch.testing.assert_close(ours[0], ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours[1], x[1] / 255.0, atol=1e-6, rtol=0)


def test_hue_shift_matches_torchvision_including_ties_and_grey() -> None:
    x = torch.rand(5, 3, 8, 8, generator=_gen())
    x[0] = torch.randint(0, 3, (3, 8, 8), generator=_gen()) / 2  # many tied channels
    x[1, :, :4] = 0.5  # grey pixels
    shift = torch.tensor([0.3, -0.1, 0.5, -0.5, 0.0])
    ref = torch.stack([TF.adjust_hue(x[i], float(shift[i])) for i in range(5)])
    torch.testing.assert_close(aug._shift_hue(x, shift), ref, atol=1e-5, rtol=0)


def test_grayscale_p_1_gives_equal_channels() -> None:
    out = augment_batch(_images(), AugmentConfig().model_copy(update=dict(grayscale_p=1.0)), ZERO, ONE, _gen())
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


def test_blur_matches_torchvision_and_unselected_samples_are_untouched() -> None:
    x = torch.rand(3, 3, 16, 16, generator=_gen())
    sigma = torch.tensor([0.5, 1.3, 2.0])
    ours = aug._gaussian_blur(x, sigma, torch.tensor([True, True, False]), sigma_max=2.0)
    for i in range(2):  # radius ceil(3 * 2.0) = 6: kernel size 13
        ref = TF.gaussian_blur(x[i], kernel_size=[13, 13], sigma=[float(sigma[i])] * 2)
        torch.testing.assert_close(ours[i], ref, atol=1e-5, rtol=0)
    assert torch.equal(ours[2], x[2])


def test_solarize_p_1_inverts_bright_values() -> None:
    x = _images()
    cfg = IDENTITY.model_copy(update=dict(solarize_p=1.0))
    expected = torch.where(x >= 128, 255 - x, x) / 255.0
    torch.testing.assert_close(augment_batch(x, cfg, ZERO, ONE, _gen()), expected, atol=1e-6, rtol=0)


def test_normalize_for_evaluation() -> None:
    x = _images(2, size=16)
    out = normalize(x, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    torch.testing.assert_close(out, x / 127.5 - 1.0)
    assert normalize(x, ZERO, ONE, size=32).shape == (2, 3, 32, 32)


def test_rejects_non_uint8_batches() -> None:
    with pytest.raises(ValueError, match="uint8"):
        augment_batch(torch.rand(2, 3, 8, 8), AugmentConfig(), ZERO, ONE)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_generator_made_for_cuda_draws_for_a_batch_on_cuda_0() -> None:
    # torch.Generator(device="cuda") reports device "cuda", a tensor there "cuda:0": the same device.
    x = _images().to("cuda:0")
    out = augment_batch(x, ALL_ON, ZERO, ONE, torch.Generator(device="cuda").manual_seed(0))
    assert out.device == x.device
    with pytest.raises(ValueError, match="generator is on cpu but the batch is on cuda:0: create it there"):
        augment_batch(x, ALL_ON, ZERO, ONE, _gen())

