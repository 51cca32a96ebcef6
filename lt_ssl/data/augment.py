"""Batched SimSiam/SimCLR augmentation with per-sample random parameters, as tensor ops on the batch's device."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # annotations only: methods import this module, and config imports methods
    from lt_ssl.config import AugmentConfig

# Speed notes, measured on CPU (the slowest place this runs): a fresh batch-sized buffer costs
# several times an in-place pass over it, torch.where with a full-size mask several times a
# multiply, and channel planes of a non-contiguous batch are slow to walk. So the pipeline works
# in place on one contiguous buffer, which it returns, and selects with lerp_ by 0/1 weights
# (exact: lerp returns `end` bit-for-bit at weight 1 and `self` at weight 0).

_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its central fallback
_LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601-2 weights, as torchvision's rgb_to_grayscale
_SOLARIZE_THRESHOLD = 0.5  # BYOL's threshold on [0,1] values

# Columns of the single (B, _NUM_DRAWS) uniform draw that carries every random choice of a batch;
# a fixed layout makes a batch's output depend only on the generator state.
_SCALE = slice(0, _ATTEMPTS)
_RATIO = slice(_ATTEMPTS, 2 * _ATTEMPTS)
_TOP, _LEFT, _FLIP, _JITTER, _BRIGHT, _CONTRAST, _SATUR, _HUE, _GRAY, _BLUR, _SIGMA, _SOLAR = range(
    2 * _ATTEMPTS, 2 * _ATTEMPTS + 12
)
_NUM_DRAWS = 2 * _ATTEMPTS + 12


def _same_device(a: torch.device, b: torch.device) -> bool:
    """"cuda" (the current device, as torch.Generator(device="cuda") reports itself) matches "cuda:0"."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


@torch.autocast("cpu", enabled=False)  # views in float32 whatever precision the model step runs in
@torch.autocast("cuda", enabled=False)
def augment_batch(
    x: Tensor,
    cfg: AugmentConfig,
    mean: Sequence[float],
    std: Sequence[float],
    generator: torch.Generator | None = None,
    extra: ExtraOps | None = None,
) -> Tensor:
    """x: (B,3,H,W) uint8 -> (B,3,cfg.size,cfg.size) float32, one random view per sample, normalised.

    Order: random resized crop + horizontal flip (one resampling), colour jitter with probability
    jitter_p (brightness, contrast, saturation, hue in that fixed order, where torchvision
    permutes it per call), grayscale, Gaussian blur, solarize, then (x - mean) / std. Parameters
    are drawn per sample as torchvision draws them per image; before normalisation values lie
    in [0, 1]. Every random number comes from `generator`, which must live on x.device.
    `extra`: per-sample RandAugment-style operations after all of that, before normalisation (see
    extra_ops); their draws come after the base pipeline's, so None leaves the view unchanged.
    """
    _check_image_batch(x)
    if generator is not None and not _same_device(generator.device, x.device):
        raise ValueError(f"generator is on {generator.device} but the batch is on {x.device}: create it there")
    batch, _, height, width = x.shape
    u = torch.rand(batch, _NUM_DRAWS, generator=generator, device=x.device)

    top, left, crop_h, crop_w = _crop_boxes(u, height, width, cfg)
    jitter = u[:, _JITTER] < cfg.jitter_p
    # Brightness scales linearly, so it rides on the resampling weights: two passes fewer.
    gain = _jitter_factor(u[:, _BRIGHT], cfg.brightness, jitter)
    out, scratch = _resized_crop(x, top, left, crop_h, crop_w, u[:, _FLIP] < cfg.flip_p, gain, cfg.size)
    if cfg.jitter_p > 0:
        _color_jitter_(out, u, jitter, cfg, scratch)
    if cfg.grayscale_p > 0:
        out.lerp_(_grayscale(out), _weight(u[:, _GRAY] < cfg.grayscale_p, out))
    if cfg.blur_p > 0:
        sigma = cfg.blur_sigma_min + (cfg.blur_sigma_max - cfg.blur_sigma_min) * u[:, _SIGMA]
        out = _gaussian_blur(out, sigma, u[:, _BLUR] < cfg.blur_p, cfg.blur_sigma_max)
    if cfg.solarize_p > 0:
        solarize = (u[:, _SOLAR] < cfg.solarize_p).view(-1, 1, 1, 1) & (out >= _SOLARIZE_THRESHOLD)
        out = torch.where(solarize, 1.0 - out, out)
    if extra is not None:
        out = extra_ops(out, extra, generator)
    return _normalize_(out, mean, std)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float], size: int | None = None) -> Tensor:
    """x: (B,3,H,W) uint8 -> (B,3,S,S) float32 (S = size, or H=W kept when None), (x/255 - mean) / std.

    The evaluation transform: no randomness, an antialiased bilinear resize only when size differs.
    """
    _check_image_batch(x)
    out = x.float().div_(255.0)
    if size is not None and tuple(out.shape[-2:]) != (size, size):
        out = F.interpolate(out, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out = out.clamp_(0.0, 1.0)
    return _normalize_(out, mean, std)


def _check_image_batch(x: Tensor) -> None:
    """Refuse anything but a (B,3,H,W) uint8 batch."""
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a (B,3,H,W) uint8 batch, got {x.dtype} {tuple(x.shape)}")


def _weight(mask: Tensor, like: Tensor) -> Tensor:
    """mask: (B,) bool -> (B,1,1,1) 0/1 lerp weights in like's dtype."""
    return mask.to(like.dtype).view(-1, 1, 1, 1)


def _normalize_(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """x: (B,3,H,W) float in [0,1] -> x, overwritten with (x - mean) / std."""
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean and std need 3 values each with std > 0, got mean={list(mean)} std={list(std)}")
    scale = torch.tensor([1.0 / s for s in std], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x.mul_(scale).add_(shift)  # two in-place passes beat one addcmul(out=x) on CPU


def _crop_boxes(u: Tensor, height: int, width: int, cfg: AugmentConfig) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """u: (B,_NUM_DRAWS) uniforms -> top, left, h, w: (B,) float, integral pixel boxes.

    torchvision's RandomResizedCrop.get_params for all samples at once: the first of 10
    (scale, log-ratio) attempts that fits wins; a sample with none falls back to the central
    crop with the aspect ratio clamped into range.
    """
    area = height * width
    scale = cfg.crop_scale_min + (cfg.crop_scale_max - cfg.crop_scale_min) * u[:, _SCALE]
    log_lo, log_hi = math.log(cfg.crop_ratio_min), math.log(cfg.crop_ratio_max)
    ratio = torch.exp(log_lo + (log_hi - log_lo) * u[:, _RATIO])
    w = torch.sqrt(area * scale * ratio).round_()
    h = torch.sqrt(area * scale / ratio).round_()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # (B,_ATTEMPTS)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax returns the first maximum
    found = fits.any(dim=1)

    in_ratio = width / height
    if in_ratio < cfg.crop_ratio_min:
        fallback_w, fallback_h = width, round(width / cfg.crop_ratio_min)
    elif in_ratio > cfg.crop_ratio_max:
        fallback_w, fallback_h = round(height * cfg.crop_ratio_max), height
    else:
        fallback_w, fallback_h = width, height
    w = torch.where(found, w.gather(1, first).squeeze(1), float(fallback_w))
    h = torch.where(found, h.gather(1, first).squeeze(1), float(fallback_h))
    # uniform integer offsets in [0, H - h]; the minimum guards u * n rounding up to n in float32
    top = torch.minimum(torch.floor(u[:, _TOP] * (height - h + 1)), height - h)
    left = torch.minimum(torch.floor(u[:, _LEFT] * (width - w + 1)), width - w)
    top = torch.where(found, top, float((height - fallback_h) // 2))
    left = torch.where(found, left, float((width - fallback_w) // 2))
    return top, left, h, w


def _axis_weights(start: Tensor, length: Tensor, flip: Tensor | None, size_in: int, size_out: int) -> Tensor:
    """start, length: (B,) crop span on one axis -> (B,size_out,size_in) bilinear weights.

    Output pixel k samples the crop at (k + 0.5) * length / size_out - 0.5 (align_corners=False),
    clamped to the crop's edge pixels: exactly torchvision's crop followed by a bilinear resize
    without antialiasing (crops of 32x32 CIFAR are upsampled, where antialiasing does nothing).
    A flip mirrors k within the crop.
    """
    k = torch.arange(size_out, device=start.device, dtype=start.dtype) + 0.5
    offset = length[:, None] * k / size_out  # (B,size_out), within the crop
    if flip is not None:
        offset = torch.where(flip[:, None], length[:, None] - offset, offset)
    pos = start[:, None] + offset - 0.5
    pos = torch.minimum(torch.maximum(pos, start[:, None]), (start + length - 1)[:, None])
    grid = torch.arange(size_in, device=start.device, dtype=start.dtype)
    return (pos[:, :, None] - grid).abs_().neg_().add_(1.0).clamp_(min=0.0)


def _resized_crop(
    x: Tensor, top: Tensor, left: Tensor, crop_h: Tensor, crop_w: Tensor, flip: Tensor, gain: Tensor, size: int
) -> tuple[Tensor, Tensor]:
    """x: (B,3,H,W) uint8, boxes, flip, gain: (B,) -> (out, scratch), both (B,3,size,size) float32.

    out is each sample's crop, resized, flipped and multiplied by gain, clamped to [0, 1]. The
    resampling is what F.grid_sample(bilinear, align_corners=False) does on a per-sample
    axis-aligned affine grid, but clamped at the crop's edges instead of the image's, and written
    as two batched matmuls since the grid is separable; gain / 255 rides on the row weights. The
    matmuls leave channels between rows and columns; after the copy back to channel-major their
    buffer is free and is handed back as scratch.
    """
    batch, channels, height, width = x.shape
    rows = _axis_weights(top, crop_h, None, height, size).mul_((gain / 255.0).view(-1, 1, 1))  # (B,size,H)
    cols = _axis_weights(left, crop_w, flip, width, size)  # (B,size,W)
    planes = torch.empty((batch, height, channels, width), dtype=torch.float32, device=x.device)
    planes.copy_(x.permute(0, 2, 1, 3))  # the uint8 -> float pass also puts each row's channels side by side
    resized = torch.bmm(rows, planes.view(batch, height, channels * width))  # (B,size,3W)
    resized = torch.bmm(resized.view(batch, size * channels, width), cols.transpose(1, 2))  # (B,size*3,size)
    out = torch.empty((batch, channels, size, size), dtype=torch.float32, device=x.device)
    # one pass clamps (brightness's clamp; also rounding can pass 1 by an ulp) and makes it channel-major
    torch.clamp(resized.view(batch, size, channels, size).permute(0, 2, 1, 3), 0.0, 1.0, out=out)
    return out, resized.view(batch, channels, size, size)


def _grayscale(x: Tensor) -> Tensor:
    """x: (B,3,H,W) float -> (B,1,H,W) luma."""
    r, g, b = x.unbind(dim=1)
    return (r * _LUMA[0]).add_(g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2]).unsqueeze(1)


def _jitter_factor(u: Tensor, strength: float, apply: Tensor) -> Tensor:
    """u, apply: (B,) -> (B,) ColorJitter factors, U[max(0, 1 - strength), 1 + strength]; 1 where not apply."""
    lo = max(0.0, 1.0 - strength)
    return torch.where(apply, lo + (1.0 + strength - lo) * u, 1.0)


def _color_jitter_(x: Tensor, u: Tensor, apply: Tensor, cfg: AugmentConfig, scratch: Tensor) -> None:
    """x: (B,3,H,W) float in [0,1], apply: (B,) bool -> contrast, saturation, hue jittered in place.

    Brightness was applied by _resized_crop. The hue shift is uniform on [-hue, hue], as
    ColorJitter; each blend is torchvision's, clamped to [0, 1]. Unselected samples get factor 1
    and a 0 lerp weight for the hue, leaving them bit-exact. scratch: a spare buffer like x.
    """

    def factor(column: int, strength: float) -> Tensor:
        return _jitter_factor(u[:, column], strength, apply).view(-1, 1, 1, 1)

    if cfg.contrast > 0:
        c = factor(_CONTRAST, cfg.contrast)
        luma = torch.tensor(_LUMA, dtype=x.dtype, device=x.device)
        mean = (x.mean(dim=(2, 3)) @ luma).view(-1, 1, 1, 1)  # the grey image's mean, from channel means
        x.mul_(c).add_(mean * (1.0 - c)).clamp_(0.0, 1.0)  # lerp_ towards a per-sample scalar is slow on CPU
    if cfg.saturation > 0:
        x.lerp_(_grayscale(x), 1.0 - factor(_SATUR, cfg.saturation)).clamp_(0.0, 1.0)
    if cfg.hue > 0:
        x.lerp_(_shift_hue(x, cfg.hue * (2.0 * u[:, _HUE] - 1.0), out=scratch), _weight(apply, x))


def _shift_hue(x: Tensor, shift: Tensor, out: Tensor | None = None) -> Tensor:
    """x: (B,3,H,W) in [0,1], shift: (B,) in turns -> hue rotated in HSV, as torchvision's adjust_hue.

    Hue in sixths of a turn, h6, comes from the max channel's case (red, green, blue; at a tie
    both cases give the same hue). Back to RGB without torchvision's six-way select: channel n
    is V - C * clamp(||h6 - c_n| - 3| - 1, 0, 1) for h6 in [0, 6) and c = 3, 5, 1 for R, G, B
    (||h6 - c| - 3| is 3 minus the circular hue distance), one broadcast expression for all
    three channels. Written into out (same shape as x, not aliasing it) when given.
    """
    r, g, b = x.unbind(dim=1)
    value = x.amax(dim=1)
    chroma = x.amin(dim=1).neg_().add_(value)
    h = (r - g).add_(chroma, alpha=4.0)  # the blue case; grey pixels (chroma 0) keep h 0
    case = (b - r).add_(chroma, alpha=2.0)
    is_case = torch.eq(value, g, out=torch.empty_like(value))  # float 0/1, written without a bool buffer
    h.lerp_(case, is_case)
    h.lerp_(torch.sub(g, b, out=case), torch.eq(value, r, out=is_case))
    h6 = h.div_(torch.clamp_min(chroma, torch.finfo(x.dtype).tiny, out=is_case)).add_(6.0 * shift.view(-1, 1, 1))
    h6.add_(torch.mul(h6, 1.0 / 6.0, out=case).floor_(), alpha=-6.0)  # mod 6
    centres = torch.tensor((3.0, 5.0, 1.0), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    ramp = torch.sub(h6.unsqueeze(1), centres, out=out)
    ramp = ramp.abs_().sub_(3.0).abs_().sub_(1.0).clamp_(0.0, 1.0)
    # V - C * ramp stays in [0, V] exactly: C * ramp <= C <= V after rounding too.
    return ramp.mul_(chroma.neg_().unsqueeze(1)).add_(value.unsqueeze(1))


def _blur_matrices(sigma: Tensor, apply: Tensor, radius: int, size: int) -> Tensor:
    """sigma, apply: (B,) -> (B,size,size) per-sample Gaussian blur along one axis, reflect-padded.

    Row k holds the kernel taps for output pixel k, folded back at the edges as torch's
    "reflect" padding does; unselected samples get the identity (a delta kernel).
    """
    t = torch.arange(-radius, radius + 1, device=sigma.device, dtype=sigma.dtype)
    kernel = torch.exp(-0.5 * (t / sigma[:, None]) ** 2)
    kernel = torch.where(apply[:, None], kernel / kernel.sum(dim=1, keepdim=True), (t == 0).to(sigma.dtype))
    src = torch.arange(size, device=sigma.device)[:, None] + torch.arange(-radius, radius + 1, device=sigma.device)
    src = torch.where(src < 0, -src, torch.where(src >= size, 2 * (size - 1) - src, src))  # (size, K)
    batch = sigma.shape[0]
    matrices = torch.zeros(batch, size, size, device=sigma.device, dtype=sigma.dtype)
    return matrices.scatter_add_(2, src.expand(batch, -1, -1), kernel[:, None, :].expand(batch, size, -1))


def _gaussian_blur(x: Tensor, sigma: Tensor, apply: Tensor, sigma_max: float) -> Tensor:
    """x: (B,3,S,S), sigma, apply: (B,) -> blurred where apply (torchvision's GaussianBlur, per sample).

    The kernel reaches 3 sigma_max each side, capped so reflect padding stays inside the image.
    Blurring is separable and linear, so it is two matmuls with per-sample (S,S) matrices.
    """
    _, _, height, width = x.shape
    radius = min(math.ceil(3.0 * sigma_max), (min(height, width) - 1) // 2)
    if height != width or radius < 1:
        raise ValueError(f"blur needs a square output of side >= 3, got {height}x{width}")
    m = _blur_matrices(sigma.to(x.dtype), apply, radius, height).unsqueeze(1)  # (B,1,S,S)
    return (m @ x @ m.transpose(-1, -2)).clamp_(0.0, 1.0)


# ------------------------------------------------------------------------- per-sample extra operations
# RandAugment-style operations whose number and magnitude are set per sample (BCL's "memorization-boosted"
# augmentation). Every op works on float (B,C,H,W) in [0,1] for any channel count and image size, batched: the
# samples that drew an op are gathered and transformed together. Ranges are the BCL reference's table
# (MediaBrain-SJTU/BCL data/randaug.py). For the ops that have a magnitude, 0 is the identity and 1 the most
# distorting end of the range, with a random sign for the signed ones, as torchvision's RandAugment orders them (the
# reference's table runs Solarize, Posterize and the four enhance ops from their strongest end at magnitude 0);
# auto_contrast, invert and equalize have none.

EXTRA_OPS = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate",  # geometric: one affine resampling
             "auto_contrast", "invert", "equalize", "solarize", "posterize",
             "contrast", "color", "brightness", "sharpness", "cutout")
_NUM_GEOMETRIC = 5
_SHEAR = 0.6  # shear factor at magnitude 1 (reference: ShearX/Y 0..0.6)
_TRANSLATE = 0.66  # translation at magnitude 1, in image widths/heights (reference: 0..0.66)
_ROTATE = 60.0  # degrees at magnitude 1 (reference: 0..60)
_SOLARIZE_MIN = 110  # solarize threshold at magnitude 1, in 1/256 steps (reference: 0..110); 256 inverts nothing
_POSTERIZE_MIN_BITS = 4  # bits kept at magnitude 1 (reference: 4..8)
_ENHANCE = 0.9  # contrast/color/brightness/sharpness factor 1 +- 0.9 at magnitude 1 (reference: 0.1..1.9)
_CUTOUT = 0.4  # cutout square side at magnitude 1, in image widths (reference: 0..0.4)
_CUTOUT_FILL = (125, 123, 114)  # the reference's cutout colour (uint8 RGB); its mean for other channel counts


@dataclass(frozen=True)
class ExtraOps:
    """Extra RandAugment-style operations with a strength w_i in [0, 1] per sample.

    Each of num_ops rounds picks one of EXTRA_OPS uniformly for each sample and applies it with probability w_i,
    at magnitude max_magnitude * w_i * U(0, 1): the reference's RandAugment_prob(k, 30 * w_i * U(0,1) / 30, p=w_i).
    Strength 0 leaves a sample untouched; strength 1 applies every round at up to the full magnitude.
    """

    strength: Tensor  # (B,) in [0, 1]
    num_ops: int = 1
    max_magnitude: float = 1.0

    def __post_init__(self):
        if self.num_ops < 0 or not 0 <= self.max_magnitude <= 1:
            raise ValueError(f"ExtraOps needs num_ops >= 0 and 0 <= max_magnitude <= 1, got {self.num_ops}, "
                             f"{self.max_magnitude}")


SYNC_FREE_DEVICES = ("cuda",)  # device types on which extra_ops runs every op on the whole batch (_masked_round)


def extra_ops(x: Tensor, extra: ExtraOps, generator: torch.Generator | None = None) -> Tensor:
    """x: (B,C,H,W) float in [0,1] -> the same batch with extra's operations applied, still in [0,1].

    x may be overwritten. On a CPU each op runs on the samples that drew it (_grouped_round: the least arithmetic,
    one host sync a round for the group sizes); on SYNC_FREE_DEVICES every op runs on the whole batch and each
    sample keeps its own op's result (_masked_round: about 15x the arithmetic, no sync and no gathers, which a GPU
    step of the experiments' small models is bound by: benchmarks/ops_per_step.py). Both give the same views.
    """
    batch = x.shape[0]
    if x.ndim != 4 or tuple(extra.strength.shape) != (batch,):
        raise ValueError(f"extra ops need a (B,C,H,W) batch and (B,) strengths, got {tuple(x.shape)} and "
                         f"{tuple(extra.strength.shape)}")
    strength = extra.strength.to(device=x.device, dtype=torch.float32)
    x = x.float()  # the base pipeline's blur leaves bf16 under CUDA autocast; grid_sample wants one dtype
    one_round = _masked_round if x.device.type in SYNC_FREE_DEVICES else _grouped_round
    # float32 throughout: under bf16 autocast the affine grid and the sharpness conv would round to 8 bits.
    with torch.autocast(x.device.type, enabled=False):
        for _ in range(extra.num_ops):
            u = torch.rand(batch, 6, generator=generator, device=x.device)  # op, apply, magnitude, sign, cutout y, x
            op = (u[:, 0] * len(EXTRA_OPS)).long().clamp_(max=len(EXTRA_OPS) - 1)
            op = torch.where(u[:, 1] < strength, op, -1)  # -1: this round leaves the sample alone
            magnitude = extra.max_magnitude * strength * u[:, 2]
            sign = torch.where(u[:, 3] < 0.5, -1.0, 1.0)
            x = one_round(x, op, magnitude, sign, u[:, 4:6])
    return x


def _grouped_round(x: Tensor, op: Tensor, magnitude: Tensor, sign: Tensor, at: Tensor) -> Tensor:
    """One round, each op applied to the samples that drew it, written into x. op: (B,) in -1..14 (-1: none);
    magnitude, sign: (B,); at: (B,2) uniforms (cutout's centre)."""
    counts = torch.bincount(op + 1, minlength=len(EXTRA_OPS) + 1).tolist()  # the host sync
    groups = torch.argsort(op, stable=True).split(counts)  # groups[1 + k]: the samples that drew op k
    geometric = torch.cat(groups[1:1 + _NUM_GEOMETRIC])
    if geometric.numel():
        x[geometric] = _affine(x[geometric], op[geometric], magnitude[geometric] * sign[geometric])
    for k, rows in enumerate(groups[1 + _NUM_GEOMETRIC:], start=_NUM_GEOMETRIC):
        if rows.numel():
            x[rows] = _pixel_op(EXTRA_OPS[k], x[rows], magnitude[rows], sign[rows], at[rows])
    return x


def _masked_round(x: Tensor, op: Tensor, magnitude: Tensor, sign: Tensor, at: Tensor) -> Tensor:
    """The same round as _grouped_round with every op run on the whole batch, each sample keeping its own op's
    result (torch.where: a sample's other results, even non-finite ones, never reach it)."""
    drew = op.view(-1, 1, 1, 1)
    out = torch.where((drew >= 0) & (drew < _NUM_GEOMETRIC), _affine(x, op, magnitude * sign), x)
    for k in range(_NUM_GEOMETRIC, len(EXTRA_OPS)):
        out = torch.where(drew == k, _pixel_op(EXTRA_OPS[k], x, magnitude, sign, at), out)
    return out


def _affine(x: Tensor, op: Tensor, v: Tensor) -> Tensor:
    """x: (n,C,H,W), op: (n,) in 0..4, v: (n,) signed magnitude -> sheared/translated/rotated about the centre.

    Bilinear, zeros outside the image (PIL's fill; the reference samples nearest). affine_grid works in coordinates
    normalised by the half sizes, so a pixel-space shear s becomes s * H / W (x) or s * W / H (y).
    """
    n, _, h, w = x.shape
    angle = torch.deg2rad(_ROTATE * v) * (op == 4)  # 0 rad (identity) for the other four
    cos, sin = angle.cos(), angle.sin()
    shear, shift = _SHEAR * v, 2.0 * _TRANSLATE * v  # shift: a fraction of the side is twice that in [-1, 1] units
    zero = torch.zeros_like(v)
    theta = torch.stack([
        torch.stack([cos, -sin * h / w + torch.where(op == 0, shear * h / w, zero), torch.where(op == 2, shift, zero)], 1),
        torch.stack([sin * w / h + torch.where(op == 1, shear * w / h, zero), cos, torch.where(op == 3, shift, zero)], 1),
    ], 1)  # (n,2,3)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp_(0.0, 1.0)


def _grey(x: Tensor) -> Tensor:
    """x: (n,C,H,W) -> (n,1,H,W): ITU-R 601 luma for RGB, the channel mean otherwise (a 1-channel image itself)."""
    return _grayscale(x) if x.shape[1] == 3 else x.mean(dim=1, keepdim=True)


def _pixel_op(name: str, x: Tensor, m: Tensor, sign: Tensor, at: Tensor) -> Tensor:
    """One non-geometric op on (n,C,H,W) in [0,1]; m, sign: (n,) magnitudes in [0,1] and +-1; at: (n,2) uniforms."""
    n, c, h, w = x.shape
    m4, factor = m.view(-1, 1, 1, 1), (1.0 + _ENHANCE * m * sign).view(-1, 1, 1, 1)
    if name == "auto_contrast":  # per channel, darkest -> 0 and brightest -> 1 (PIL's autocontrast, no cutoff)
        lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
        spread = hi - lo
        return torch.where(spread > 0, (x - lo) / spread.clamp_min(1e-12), x).clamp_(0.0, 1.0)
    if name == "invert":
        return 1.0 - x
    if name == "equalize":
        return _equalize(x)
    if name == "solarize":  # PIL inverts the 8-bit levels >= threshold
        threshold = (256.0 - (256 - _SOLARIZE_MIN) * m4)
        return torch.where(x * 255.0 >= threshold, 1.0 - x, x)
    if name == "posterize":  # keep the top `bits` bits of the 8-bit level
        step = torch.exp2(8.0 - torch.round(8.0 - (8 - _POSTERIZE_MIN_BITS) * m4))
        return torch.floor(torch.round(x * 255.0) / step) * step / 255.0
    if name == "contrast":  # PIL: blend with the mean grey level
        mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
        return (mean + factor * (x - mean)).clamp_(0.0, 1.0)
    if name == "color":  # PIL: blend with the greyscale image; a 1-channel image is its own grey
        grey = _grey(x)
        return (grey + factor * (x - grey)).clamp_(0.0, 1.0)
    if name == "brightness":  # PIL: blend with black
        return (x * factor).clamp_(0.0, 1.0)
    if name == "sharpness":  # PIL: blend with the 3x3 smoothed image, whose border pixels are the original's
        if h < 3 or w < 3:
            return x
        kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=x.device) / 13.0
        smooth = x.clone()
        smooth[:, :, 1:-1, 1:-1] = F.conv2d(x, kernel.expand(c, 1, 3, 3), groups=c)
        return (smooth + factor * (x - smooth)).clamp_(0.0, 1.0)
    if name == "cutout":  # a square of side m * 0.4 * W at a uniform centre, clipped at the top/left edges as PIL
        side = (_CUTOUT * w * m).view(-1, 1)
        top = torch.clamp_min(at[:, :1] * h - side / 2, 0.0).floor()
        left = torch.clamp_min(at[:, 1:] * w - side / 2, 0.0).floor()
        rows = torch.arange(h, device=x.device, dtype=x.dtype)
        cols = torch.arange(w, device=x.device, dtype=x.dtype)
        inside = (((rows >= top) & (rows < top + side))[:, :, None] & ((cols >= left) & (cols < left + side))[:, None, :])
        fill = torch.tensor(_CUTOUT_FILL if c == 3 else [sum(_CUTOUT_FILL) / 3] * c, device=x.device) / 255.0
        return torch.where(inside[:, None], fill.view(1, c, 1, 1), x)
    raise AssertionError(f"no such extra op {name!r}")


def _equalize(x: Tensor) -> Tensor:
    """x: (n,C,H,W) in [0,1] -> each channel's 8-bit histogram equalised (torchvision's equalize, PIL's lookup table)."""
    n, c, h, w = x.shape
    q = torch.round(x * 255.0).long().view(n * c, h * w)
    hist = torch.zeros(n * c, 256, device=x.device).scatter_add_(1, q, torch.ones_like(q, dtype=torch.float32))
    levels = torch.arange(256, device=x.device, dtype=torch.float32)
    top = ((hist > 0) * levels).argmax(dim=1, keepdim=True)  # the brightest level present
    step = torch.floor((h * w - hist.gather(1, top)) / 255.0)  # (n*c, 1)
    lut = torch.floor((hist.cumsum(dim=1) + torch.floor(step / 2)) / step.clamp_min(1.0))
    lut = torch.cat([torch.zeros_like(step), lut[:, :-1]], dim=1).clamp_(0.0, 255.0)
    # a channel with a single level (step 0) is left as it is, as torchvision does
    out = torch.where(step > 0, lut.gather(1, q), q.float()) / 255.0
    return out.view(n, c, h, w)
