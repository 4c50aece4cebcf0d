"""Batch-level augmentation on float NCHW tensors (runs wherever the batch is: CPU or GPU).

All geometric ops (flip, random resized crop, rotation, translation) are folded into one affine warp per
batch (`affine_grid` + `grid_sample`), so their cost does not add up. Every op draws from an explicit
`torch.Generator`, so a batch's augmentation is reproducible from (seed, epoch, step) and resumes exactly.
The policies RandAugment and TrivialAugmentWide (data/policies.py) give each image its own ops.
Training batches arrive normalised (engine/inference.to_input); given the normalisation, the Augmenter
works on pixel values in [0, 1] (undone and redone around the ops that need it: colour, policies, erasing).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.data import policies
from cnnlab.errors import ConfigError

# Every op and its "off" value. Probabilities for flips/erasing, fractions/degrees/strengths otherwise.
OPS: dict[str, float] = {
    "hflip": 0.0,       # probability of a horizontal flip
    "vflip": 0.0,       # probability of a vertical flip
    "crop_scale": 1.0,  # random resized crop: smallest kept area fraction (1 = off)
    "rotate": 0.0,      # max rotation in degrees
    "translate": 0.0,   # max shift as a fraction of the image size
    "brightness": 0.0,  # colour jitter strengths (0.2 = +-20%)
    "contrast": 0.0,
    "saturation": 0.0,
    "erase": 0.0,       # probability of erasing one random rectangle
    "mixup": 0.0,       # mixup Beta(alpha, alpha); 0 = off
    "cutmix": 0.0,      # cutmix Beta(alpha, alpha); 0 = off (with mixup too: one of them per batch)
    "n": 0.0,           # RandAugment(N, M): N ops per image, each drawn from 14 (identity included); 0 = off
    "m": 9.0,           # RandAugment: M, the ops' magnitude bin on torchvision's 0-30 scale
    "trivialaugment": 0.0,  # TrivialAugmentWide: probability an image gets one op at a random magnitude; 0 = off
}
_LIGHT = {"hflip": 0.5, "translate": 0.1}
_STANDARD = {**_LIGHT, "crop_scale": 0.6, "rotate": 10.0, "brightness": 0.2, "contrast": 0.2, "saturation": 0.2}
PRESETS: dict[str, dict[str, float]] = {
    "none": {},
    "light": _LIGHT,
    "standard": _STANDARD,
    "strong": {**_STANDARD, "erase": 0.25, "mixup": 0.2, "cutmix": 1.0},
    # the policies in place of standard's rotation and colour jitter, after the same flip, crop and shift
    # (torchvision's reference recipe: random resized crop, flip, then the policy)
    "randaugment": {**_LIGHT, "crop_scale": 0.6, "n": 2.0, "m": 9.0},
    "trivialaugment": {**_LIGHT, "crop_scale": 0.6, "trivialaugment": 1.0},
}


def resolve_ops(preset: str, overrides: dict[str, Any] | None = None) -> dict[str, float]:
    """The op settings of a preset plus per-op overrides; unknown names are ConfigErrors."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown augmentation {preset!r} — choose one of: {', '.join(PRESETS)}")
    ops = {**OPS, **PRESETS[preset]}
    for key, value in (overrides or {}).items():
        if key not in OPS:
            raise ConfigError(f"unknown augmentation op {key!r} — valid ops: {', '.join(OPS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"augmentation op {key} = {value!r} is invalid — expected a number >= 0")
        ops[key] = float(value)
    for key in ("hflip", "vflip", "erase", "trivialaugment"):
        if ops[key] > 1:
            raise ConfigError(f"augmentation op {key} = {ops[key]} is a probability — expected a value in [0, 1]")
    if not 0 < ops["crop_scale"] <= 1:
        raise ConfigError(f"augmentation op crop_scale = {ops['crop_scale']} is invalid — expected a fraction in (0, 1]")
    if ops["n"] != int(ops["n"]) or ops["n"] > 10:
        raise ConfigError(f"augmentation op n = {ops['n']:g} is RandAugment's number of ops per image — expected a whole number 0-10")
    if ops["m"] > policies.NUM_BINS - 1:
        raise ConfigError(f"augmentation op m = {ops['m']:g} is RandAugment's magnitude — expected a number 0-{policies.NUM_BINS - 1}")
    if "m" in (overrides or {}) and not ops["n"]:
        raise ConfigError(f"augmentation op m sets RandAugment's magnitude, which is off in {preset!r} — use --aug randaugment "
                          "or also set n (ops per image), e.g. --aug-arg n=2")
    return ops


def matched_test_size(ops: dict[str, float], size: int) -> int:
    """The eval size that matches random resized crops at training size `size` ("FixRes", Touvron et al. 2019):
    a crop keeping an area fraction s ~ U(crop_scale, 1) magnifies objects 1/sqrt(s) times, so whole test
    images are shown larger than the training size — here by the strongest crop's magnification,
    1/sqrt(crop_scale), rounded to a multiple of 16 px (8 px below 64 px) so the nets' halvings (a stride-2
    stem and three pools for resnet9) divide it: floor-mode pools drop the odd row otherwise, and sizes like
    104 or 120 px scored 1-3 points below 112 and 128 px. The mean magnification, 2(1 - sqrt(c)) / (1 - c)
    (FixRes' apparent-size argument), undershoots: resnet9 trained at 96 px with crop_scale 0.6 scored
    89.9% held-out at 128 px against 88.5% at 112 px (6 runs on cats/dogs; validation images agreed,
    92.4% against 91.2%; docs/recipes.md). `size` when crops are off."""
    c = ops.get("crop_scale", 1.0)
    if c >= 1 or size <= 0:
        return size
    align = 16 if size >= 64 else 8
    return max(size, int(size / math.sqrt(c) / align + 0.5) * align)


def matched_test_scale(ops: dict[str, float], size: int) -> float:
    """matched_test_size as an enlargement factor (1.0 when crops are off or the rounding keeps the size)."""
    return matched_test_size(ops, size) / size if size > 0 else 1.0


def training_size(train_size: int | None, image_hw: tuple[int, int]) -> int | None:
    """The size training batches are cropped to (`--train-size`), or None when it is the images' own size."""
    return train_size if train_size and (train_size, train_size) != tuple(image_hw) else None


def batch_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """The generator for one training batch: a pure function of (seed, epoch, step), so resume is exact."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 100_003 + step + 17)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def geometric(x: torch.Tensor, ops: dict[str, float], g: torch.Generator, size: int | None = None) -> torch.Tensor:
    """Flips, random resized crop, rotation and translation as one affine warp (reflection padding).
    size: output size x size (the training size, `--train-size`); None keeps the input's size."""
    n = x.shape[0]
    out_hw = (size, size) if size else tuple(x.shape[-2:])
    fx = torch.where(torch.rand(n, generator=g) < ops["hflip"], -1.0, 1.0)
    fy = torch.where(torch.rand(n, generator=g) < ops["vflip"], -1.0, 1.0)
    warp = ops["crop_scale"] < 1 or ops["rotate"] > 0 or ops["translate"] > 0 or out_hw != tuple(x.shape[-2:])
    if not warp:  # flips alone: exact pixel copies, no interpolation
        if ops["hflip"] > 0:
            x = torch.where((fx < 0).view(-1, 1, 1, 1).to(x.device), x.flip(3), x)
        if ops["vflip"] > 0:
            x = torch.where((fy < 0).view(-1, 1, 1, 1).to(x.device), x.flip(2), x)
        return x
    zoom = _uniform(n, ops["crop_scale"], 1.0, g).sqrt()  # side fraction of the crop that fills the output
    angle = _uniform(n, -ops["rotate"], ops["rotate"], g) * math.pi / 180
    tx = _uniform(n, -ops["translate"], ops["translate"], g) * 2  # normalised coordinates span 2
    ty = _uniform(n, -ops["translate"], ops["translate"], g) * 2
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    theta = torch.stack([torch.stack([cos * fx, -sin * fy, tx], 1), torch.stack([sin * fx, cos * fy, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), [n, x.shape[1], *out_hw], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def colour(x: torch.Tensor, ops: dict[str, float], g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation jitter, per image, clamped to [0, 1] (pixel values, not normalised)."""
    n = x.shape[0]
    shape = (n, 1, 1, 1)
    if ops["brightness"] > 0:
        x = x * (1 + _uniform(n, -ops["brightness"], ops["brightness"], g)).view(shape).to(x)
    if ops["contrast"] > 0:
        mean = x.mean((1, 2, 3), keepdim=True)
        x = (x - mean) * (1 + _uniform(n, -ops["contrast"], ops["contrast"], g)).view(shape).to(x) + mean
    if ops["saturation"] > 0 and x.shape[1] == 3:
        grey = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = (x - grey) * (1 + _uniform(n, -ops["saturation"], ops["saturation"], g)).view(shape).to(x) + grey
    return x.clamp(0, 1)


def _boxes(n: int, h: int, w: int, area: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(n, h, w) boolean masks of rectangles with the given area fractions at random centres."""
    bh = (area.sqrt() * h).round().clamp(1, h)
    bw = (area.sqrt() * w).round().clamp(1, w)
    cy, cx = torch.rand(n, generator=g) * h, torch.rand(n, generator=g) * w
    ys, xs = torch.arange(h).view(1, -1, 1), torch.arange(w).view(1, 1, -1)
    # clipped at the borders (as in the CutMix paper), so a box near an edge is smaller, never shifted inwards
    y0, y1 = (cy - bh / 2).clamp(0, h).view(-1, 1, 1), (cy + bh / 2).clamp(0, h).view(-1, 1, 1)
    x0, x1 = (cx - bw / 2).clamp(0, w).view(-1, 1, 1), (cx + bw / 2).clamp(0, w).view(-1, 1, 1)
    return (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def erase(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """Random erasing: with probability p, one rectangle (2-25% of the image) set to grey."""
    n, _, h, w = x.shape
    mask = _boxes(n, h, w, _uniform(n, 0.02, 0.25, g), g) & (torch.rand(n, generator=g) < p).view(-1, 1, 1)
    return torch.where(mask.unsqueeze(1).to(x.device), torch.full_like(x, 0.5), x)


def mix(x: torch.Tensor, y: torch.Tensor, ops: dict[str, float], g: torch.Generator):
    """Mixup or cutmix with a partner from the same batch. Returns (x, partner labels, weight of the own label)."""
    use = [k for k in ("mixup", "cutmix") if ops[k] > 0]
    kind = use[int(torch.randint(len(use), (1,), generator=g))]
    rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=g)))
    lam = float(rng.beta(ops[kind], ops[kind]))
    perm = torch.randperm(len(y), generator=g)
    if kind == "mixup":
        x = lam * x + (1 - lam) * x[perm.to(x.device)]
    else:
        n, _, h, w = x.shape
        box = _boxes(1, h, w, torch.tensor([1 - lam]), g)[0].to(x.device)
        x = torch.where(box, x[perm.to(x.device)], x)
        lam = 1 - float(box.float().mean())  # the area actually pasted
    return x, y[perm.to(y.device)], lam


def pixel_range(norm: dict | None) -> tuple[list[float], list[float]] | None:
    """(mean, std) when `norm` (a model's normalisation: scale, mean, std) shifts pixel values away from [0, 1];
    None when inputs are plain [0, 1] pixels (models trained from scratch here)."""
    if not norm:
        return None
    mean, std = norm.get("mean"), norm.get("std")
    if (mean is None or all(v == 0.0 for v in mean)) and (std is None or all(v == 1.0 for v in std)):
        return None
    return list(mean or [0.0]), list(std or [1.0])


class Augmenter:
    """Applies the enabled ops to a batch: geometric -> policy (RandAugment / TrivialAugmentWide) -> colour ->
    erasing -> mixup/cutmix.

    size: the training size (`--train-size`): batches come out size x size, so random crops are cut from
    the larger loaded images (sharp, not upsampled) while evaluation sees the whole images at their size.
    norm: the normalisation the batches arrive in (to_input's `norm`; None: [0, 1] pixels). The ops that
    depend on pixel values (colour, the policies, erasing's grey) run on pixel values: the batch is
    un-normalised before them and normalised again after, so a pretrained model's inputs stay correct.
    Geometric warps, mixup and cutmix commute with the normalisation and run as they are."""

    def __init__(self, ops: dict[str, float], size: int | None = None, norm: dict | None = None):
        self.ops = ops
        self.size = size
        self.norm = norm
        self.enabled = any(ops[k] != OPS[k] for k in OPS) or size is not None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator):
        """x float (N, C, H, W): [0, 1] pixels, or normalised by self.norm; returns (x, partner labels or None,
        own-label weight lam), x as it came (normalised if it came normalised)."""
        ops = self.ops
        x = geometric(x, ops, g, self.size)
        jitter = ops["brightness"] or ops["contrast"] or ops["saturation"]
        if jitter or ops["n"] or ops["trivialaugment"] or ops["erase"]:
            shift = pixel_range(self.norm)
            if shift is not None:
                mean, std = (torch.tensor(v, device=x.device, dtype=x.dtype).view(1, -1, 1, 1) for v in shift)
                x = x * std + mean
            if ops["n"]:
                x = policies.rand_augment(x, int(ops["n"]), ops["m"], g)
            if ops["trivialaugment"]:
                x = policies.trivial_augment(x, ops["trivialaugment"], g)
            if jitter:
                x = colour(x, ops, g)
            if ops["erase"] > 0:
                x = erase(x, ops["erase"], g)
            if shift is not None:
                x = (x - mean) / std
        if (ops["mixup"] > 0 or ops["cutmix"] > 0) and len(y) > 1:
            return mix(x, y, ops, g)
        return x, None, 1.0


def soft_targets(y: torch.Tensor, num_classes: int, y2: torch.Tensor | None = None, lam: float = 1.0, smoothing: float = 0.0) -> torch.Tensor:
    """(N, K) target distributions: one-hot, mixed with the partner's by lam, smoothed towards uniform."""
    t = F.one_hot(y, num_classes).float()
    if y2 is not None:
        t = lam * t + (1 - lam) * F.one_hot(y2, num_classes).float()
    return t * (1 - smoothing) + smoothing / num_classes


def augment_uint8(x: np.ndarray, y: np.ndarray, ops: dict[str, float], seed: int = 0, size: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Augment uint8 (N, H, W, C) images as training would (at the training size, if given); returns images
    and a label note per image ("" or "+ 30% class k" for a mixup/cutmix partner). Used by `cnnlab show --augmented`."""
    xt = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 255
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    out, y2, lam = Augmenter(ops, size)(xt, yt, batch_generator(seed, 1, 0))
    imgs = (out.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    notes = [""] * len(y) if y2 is None else [f" ({lam:.0%}) + {int(b)} ({1 - lam:.0%})" for b in y2]
    return imgs, notes
