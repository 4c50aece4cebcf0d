"""Will training fit in memory? A pre-flight estimate, so a run too large for this machine ends in one line naming
--image-size / --batch-size instead of being killed by the kernel's OOM killer with no message at all.

What training holds beyond the loaded data and the model's weights: the activations autograd keeps for the backward
pass (per image in the batch), the input batch as floats, and the gradients and optimizer state (per parameter).
The activations are counted with forward hooks during one forward pass of a single image, in the run's precision:
the bytes of every leaf module's output. Measured against the peak RSS of real training steps on this machine
(seed_cnn, resnet9, resnet18, tv_resnet50, vgg, mobilenet_v2, efficientnet_lite0, convnext; 64-400 px, batches
16-64, fp32 and bf16), the true peak was 1.0-2.5x this count, never less — so the count is a lower bound, and a run
is refused only when even `REFUSE_FRACTION` of it exceeds the memory available: what fits is never refused.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from cnnlab.errors import ConfigError

# refuse only when this share of the lower-bound count is already more than is available (headroom for models whose
# autograd keeps less than their modules' outputs: in-place ops, recomputation)
REFUSE_FRACTION = 0.8
# the suggestions ("what would fit") assume the largest peak/count ratio measured, so what they name does fit
SUGGEST_FACTOR = 2.5
PER_PARAMETER = 3  # a gradient and up to two optimizer moments (Adam/AdamW) per weight; the weights are allocated already
GiB = 2**30


@dataclass
class Footprint:
    """Bytes training needs beyond the loaded data and the model's weights."""

    activations_per_image: int  # leaf-module outputs of one image's forward pass, in the run's precision
    input_per_image: int  # the image as a float tensor
    fixed: int  # gradients and optimizer state

    def need(self, batch: int, factor: float = 1.0) -> int:
        return int(self.fixed + batch * (factor * self.activations_per_image + self.input_per_image))


def count_forward(model: nn.Module, x: torch.Tensor, precision: str = "fp32") -> tuple[torch.Tensor, int]:
    """Run `model` on `x` (eval mode, no gradients, autocast as training will) and return (its output, the bytes of
    every leaf module's output). The model is left in train mode."""
    from cnnlab.engine.device import autocast

    total = 0

    def add(module, inputs, output) -> None:
        nonlocal total
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()

    hooks = [m.register_forward_hook(add) for m in model.modules() if next(m.children(), None) is None]
    try:
        with torch.no_grad(), autocast(x.device, precision):
            out = model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
        model.train()
    return out, total


def footprint(model: nn.Module, activations_per_image: int, image_shape: tuple[int, int, int]) -> Footprint:
    h, w, c = image_shape
    n_params = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return Footprint(activations_per_image, c * h * w * 4, PER_PARAMETER * n_params)


def available_bytes(device: torch.device) -> int | None:
    """Memory the run can still use on `device`: free GPU memory, or this machine's available RAM (cgroup-capped)."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    from cnnlab.data.stream import available_memory_bytes

    return available_memory_bytes()


def share_held(device: torch.device) -> float:
    """The share of a global batch whose activations are in `device`'s memory in a distributed run (torchrun's
    environment): a GPU holds one rank's share; a machine's RAM the shares of all the ranks it runs. 1 in one process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", 1))
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        return 1.0
    if world <= 1:
        return 1.0
    return (1 if device.type == "cuda" else min(local, world)) / world


def check_fits(fp: Footprint, batch: int, image_shape: tuple[int, int, int], model_name: str, available: int | None,
               batch_flag: int | None = None, share: float = 1.0) -> None:
    """A ConfigError naming --batch-size / --image-size and what would fit when training clearly cannot fit.
    `batch`: the images in memory at once; `batch_flag`: the --batch-size they come from (default `batch`), of
    which a distributed run holds `share` here (share_held)."""
    if available is None or REFUSE_FRACTION * fp.need(batch) <= available:
        return
    h, w, _ = image_shape
    room = 0.9 * available - fp.fixed  # the suggestions keep a tenth free for everything else
    per_image = SUGGEST_FACTOR * fp.activations_per_image + fp.input_per_image
    fits = int(room // per_image / share) if room > 0 else 0  # as a --batch-size
    size = f"{h}x{w}" if h != w else f"{h}"
    scale = math.sqrt(room / (per_image * batch)) if room > 0 else 0.0  # activations grow with the pixel count
    smaller = int(min(h, w) * scale) // 8 * 8
    smaller = smaller if smaller >= 16 else None
    if fits >= 1:
        hint = f"use --batch-size {fits} or less, or " + (f"--image-size {smaller} or less at this batch size" if smaller else "a smaller --image-size")
    elif smaller:
        hint = f"even --batch-size 1 does not fit; use --image-size {smaller} or less"
    else:
        hint = "even --batch-size 1 does not fit; choose a smaller --image-size or --model"
    raise ConfigError(f"training {model_name} on {size} px images with --batch-size {batch_flag or batch} needs at least "
                      f"{_bytes(fp.need(batch))} of memory ({_bytes(fp.activations_per_image)} of activations per image) but"
                      f" {_bytes(available)} is available — {hint}")


def _bytes(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1024:.0f} KiB"


def run_precision(cfg, model: nn.Module) -> str:
    """The precision the run will train in (cfg.precision 'auto' resolved for its device and model)."""
    from cnnlab.engine.device import resolve_device, resolve_precision

    return resolve_precision(cfg.precision, resolve_device(cfg.device), model)


def check_training(model: nn.Module, activations_per_image: int, dataset, cfg) -> None:
    """Refuse (ConfigError) training `model` on `dataset` as `cfg` says when it clearly cannot fit in the memory
    available now — after the data and the model are loaded, before anything is written."""
    from cnnlab.engine.device import resolve_device

    flag = cfg.resolved().batch_size
    batch = min(flag, max(1, len(dataset.train)))  # a batch never holds more than the training set
    device = resolve_device(cfg.device)
    fp = footprint(model, activations_per_image, dataset.image_shape)
    if device.type == "cuda":  # the weights move to the GPU too
        fp.fixed += sum(p.numel() * p.element_size() for p in model.parameters())
    share = share_held(device)
    check_fits(fp, math.ceil(batch * share), dataset.image_shape, getattr(model, "cnnlab_name", type(model).__name__),
               available_bytes(device), flag, share)
