"""RandAugment and TrivialAugmentWide on whole batches, each image with its own ops.

The op list, the 31 magnitude bins and their ranges are torchvision's (`transforms.v2.RandAugment`,
`TrivialAugmentWide`): identity, shear x/y, translate x/y, rotate, brightness, colour (saturation), contrast,
sharpness, posterize, solarize, autocontrast, equalize. Affine ops fill with black and interpolate bilinearly
(torchvision's reference training recipe passes bilinear). Images are float NCHW in [0, 1], 1 or 3 channels.

Vectorised: a round draws an op, a sign and (TrivialAugment) a strength for every image at once; then each op
runs once on the images that drew it (all five affine ops in one `grid_sample`), so a batch costs at most one
call per op whatever its size. Every draw comes from the caller's generator, in an order that does not depend on
the pixels, so a batch is a pure function of (seed, epoch, step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NUM_BINS = 31  # magnitude bins 0..30, as torchvision: RandAugment's M indexes them, TrivialAugment draws one

# (name, largest magnitude of RandAugment, of TrivialAugmentWide, signed). Translations: RandAugment's is
# 150/331 of the image side (a fraction here), TrivialAugmentWide's 32 pixels whatever the size. Posterize
# counts bits removed (8 - bits kept: 4 at most for RandAugment, 6 for TrivialAugmentWide); solarize the
# fraction of the range inverted (threshold 1 - that). Ops without a magnitude have None.
OPS: tuple[tuple[str, float | None, float | None, bool], ...] = (
    ("identity", None, None, False),
    ("shear_x", 0.3, 0.99, True),
    ("shear_y", 0.3, 0.99, True),
    ("translate_x", 150 / 331, 32.0, True),
    ("translate_y", 150 / 331, 32.0, True),
    ("rotate", 30.0, 135.0, True),  # degrees
    ("brightness", 0.9, 0.99, True),
    ("color", 0.9, 0.99, True),
    ("contrast", 0.9, 0.99, True),
    ("sharpness", 0.9, 0.99, True),
    ("posterize", 4.0, 6.0, False),
    ("solarize", 1.0, 1.0, False),
    ("autocontrast", None, None, False),
    ("equalize", None, None, False),
)
OP_NAMES = tuple(op[0] for op in OPS)
_AFFINE = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")
_LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights (ITU-R 601-2)


def magnitudes(policy: str, bins: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Each image's signless magnitude for each op, (n, len(OPS)), from its bin index in [0, 30] (float bins
    interpolate; torchvision's M is a whole number). Translations come out in pixels, posterize as bits kept."""
    col = 1 if policy == "randaugment" else 2
    frac = bins.float().view(-1, 1) / (NUM_BINS - 1)
    top = torch.tensor([op[col] or 0.0 for op in OPS])
    mags = frac * top
    for name, side in (("translate_x", w), ("translate_y", h)):
        i = OP_NAMES.index(name)
        pixels = mags[:, i] * side if policy == "randaugment" else mags[:, i]  # RandAugment's: a fraction of the side
        mags[:, i] = pixels.trunc()  # whole pixels (torchvision's int())
    i = OP_NAMES.index("posterize")  # torchvision: 8 - round(bin / (30 / 4)) bits kept (6 for TrivialAugmentWide)
    mags[:, i] = 8 - (bins.float() / ((NUM_BINS - 1) / top[i])).round()
    return mags


def sample_round(policy: str, n: int, m: float, g: torch.Generator, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One round of a policy for n images: (op index, signed magnitude), both (n,) on the CPU.
    RandAugment uses magnitude bin m for every image; TrivialAugmentWide draws a bin per image."""
    op = torch.randint(len(OPS), (n,), generator=g)
    bins = torch.randint(NUM_BINS, (n,), generator=g) if policy == "trivialaugment" else torch.full((n,), float(m))
    negative = torch.rand(n, generator=g) < 0.5
    mag = magnitudes(policy, bins, h, w).gather(1, op.view(-1, 1)).squeeze(1)
    signed = torch.tensor([op_[3] for op_ in OPS])[op]
    return op, torch.where(signed & negative, -mag, mag)


def apply_ops(x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """Image i gets op[i] at strength mag[i]; each op runs once, on the images that drew it."""
    out = torch.empty_like(x)
    affine = torch.zeros(len(op), dtype=torch.bool)
    for name in _AFFINE:
        affine |= op == OP_NAMES.index(name)
    if affine.any():
        idx = affine.nonzero().squeeze(1)
        out[idx.to(x.device)] = _affine(x[idx.to(x.device)], op[idx], mag[idx])
    for k, name in enumerate(OP_NAMES):
        if name in _AFFINE:
            continue
        idx = (op == k).nonzero().squeeze(1)
        if not len(idx):
            continue
        on = idx.to(x.device)
        fn = _PIXEL_OPS.get(name)
        out[on] = x[on] if fn is None else fn(x[on], mag[idx].to(x.device, x.dtype).view(-1, 1, 1, 1))
    return out


def _affine(x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """Shear (about the top-left corner), translate (pixels) and rotate (degrees, about the centre) as one warp,
    in affine_grid's coordinates (-1..1 across each side, hence the aspect factors), black outside."""
    n, _, h, w = x.shape
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    is_ = {name: op == OP_NAMES.index(name) for name in _AFFINE}
    s = torch.where(is_["shear_x"], mag, 0.0)  # source x = x + s * y in pixels from the top-left corner
    theta[:, 0, 1] += s * h / w
    theta[:, 0, 2] += s * h / w
    s = torch.where(is_["shear_y"], mag, 0.0)
    theta[:, 1, 0] += s * w / h
    theta[:, 1, 2] += s * w / h
    theta[:, 0, 2] -= torch.where(is_["translate_x"], mag, 0.0) * 2 / w  # content moves right by mag pixels
    theta[:, 1, 2] -= torch.where(is_["translate_y"], mag, 0.0) * 2 / h
    a = torch.where(is_["rotate"], mag, 0.0) * torch.pi / 180
    rot = is_["rotate"]
    theta[rot, 0, 0] = torch.cos(a[rot])
    theta[rot, 0, 1] = -torch.sin(a[rot]) * h / w
    theta[rot, 1, 0] = torch.sin(a[rot]) * w / h
    theta[rot, 1, 1] = torch.cos(a[rot])
    grid = F.affine_grid(theta.to(x.device, x.dtype), [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return r * _LUMA[0] + g * _LUMA[1] + b * _LUMA[2]


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's _blend: factor * x + (1 - factor) * other, clamped (factor = 1 + signed magnitude)."""
    return torch.lerp(other.expand_as(x), x, factor).clamp_(0, 1)


def _brightness(x, m):  # a blend with black
    return (x * (1 + m)).clamp_(0, 1)


def _color(x, m):  # saturation; a grey image has none to change
    return x if x.shape[1] == 1 else _blend(x, _grey(x), 1 + m)


def _contrast(x, m):
    return _blend(x, _grey(x).mean((1, 2, 3), keepdim=True), 1 + m)


def _sharpness(x, m):
    """Blend with a 3x3 smoothed copy (PIL's SMOOTH kernel); the one-pixel border keeps the original pixels."""
    if x.shape[-1] <= 2 or x.shape[-2] <= 2:
        return x
    # kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 = (the 3x3 sum + 4 x centre) / 13; a pool is faster than a conv
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = (F.avg_pool2d(x, 3, stride=1) * 9 + 4 * x[..., 1:-1, 1:-1]) / 13
    return _blend(x, smooth, 1 + m)


def _posterize(x, bits):
    """Keep the top `bits` bits of each 8-bit value (8 = unchanged)."""
    step = 2.0 ** (8 - bits)
    q = (x * 255).round_().div_(step).floor_().mul_(step / 255)
    return torch.where(bits >= 8, x, q)


def _solarize(x, fraction):
    """Invert pixels at or above 1 - fraction (torchvision: threshold = linspace(1, 0)[bin]), compared in 8-bit
    steps so that float rounding never flips a pixel that sits exactly on the threshold."""
    threshold = torch.ceil((1 - fraction) * 255 - 1e-3)  # in 8-bit steps; round(255 x) >= t  <=>  x >= (t - 0.5) / 255
    return torch.where(x >= (threshold - 0.5) / 255, 1 - x, x)


def _autocontrast(x, _m):
    """Stretch each channel to the full range; flat channels unchanged."""
    lo = x.amin((2, 3), keepdim=True)
    hi = x.amax((2, 3), keepdim=True)
    flat = hi <= lo
    scale = torch.where(flat, 1.0, 1 / (hi - lo).clamp_min(1e-12))
    lo = torch.where(flat, 0.0, lo)
    return ((x - lo) * scale).clamp(0, 1)


def _equalize(x, _m):
    """Histogram equalisation per channel on 8-bit values, torchvision's lookup table, all channels at once."""
    n, c, h, w = x.shape
    v = (x * 255).round_().clamp_(0, 255).to(torch.int64).reshape(n * c, h * w)
    rows = torch.arange(n * c, device=x.device).view(-1, 1) * 256
    hist = torch.bincount((v + rows).flatten(), minlength=n * c * 256).view(n * c, 256).double()
    # step = (pixels - count of the brightest value present) // 255; 0 (one or two values) leaves the channel as it is
    top = v.amax(1, keepdim=True)
    step = torch.div(h * w - hist.gather(1, top), 255, rounding_mode="floor")
    lut = torch.div(hist.cumsum(1) + torch.div(step, 2, rounding_mode="floor"), step.clamp_min(1), rounding_mode="floor")
    lut = F.pad(lut, (1, 0))[:, :-1].clamp(0, 255)
    out = lut.gather(1, v).to(x.dtype) / 255
    return torch.where(step.view(n, c, 1, 1) > 0, out.view(n, c, h, w), x)


_PIXEL_OPS = {"brightness": _brightness, "color": _color, "contrast": _contrast, "sharpness": _sharpness, "posterize": _posterize,
              "solarize": _solarize, "autocontrast": _autocontrast, "equalize": _equalize}


def rand_augment(x: torch.Tensor, n_ops: int, m: float, g: torch.Generator) -> torch.Tensor:
    """RandAugment(N, M) (Cubuk et al. 2020): n_ops rounds, each image drawing one of the 14 ops per round
    (identity included) at magnitude bin m of 0..30 with a random sign."""
    h, w = x.shape[-2:]
    for _ in range(n_ops):
        x = apply_ops(x, *sample_round("randaugment", len(x), m, g, h, w))
    return x


def trivial_augment(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """TrivialAugmentWide (Müller & Hutter 2021): each image one op at a random bin of 0..30; with p < 1 an
    image skips it with probability 1 - p."""
    h, w = x.shape[-2:]
    op, mag = sample_round("trivialaugment", len(x), 0, g, h, w)
    skip = torch.rand(len(x), generator=g) >= p
    return apply_ops(x, torch.where(skip, 0, op), mag)
