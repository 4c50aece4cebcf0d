"""The default recipe: what `cnnlab train --data D` does when no --model is given (model = 'auto').

It chooses from the data and the time budget, and says what it chose (config.yaml records the result):
- model: ``resnet9``, the fastest strong net from scratch on a CPU (docs/recipes.md has the measurements);
- image size, for image folders (whose files have many sizes): the largest of 128/112/96/80/64/48/32 px
  at which the training set can be seen at least ``MIN_EPOCHS`` times in the time budget, from the speed of
  a few real training steps measured on this machine (with ``--train-size N``: N px crops of images loaded
  at the size matched to the crops, data/augment.matched_test_size). Fixed-size data (CSV, .npz, built-in)
  keeps its size unless it is too slow to train that often, then it is scaled down the same way; tiny images are
  upscaled to 32 px so the net's three pools keep some resolution;
- augmentation: ``standard`` (flip, crop, rotation, colour) for colour images of 48 px or more,
  ``light`` (flip, shift) otherwise;
- batch size: 32 for training sets of up to ``SMALL_DATA`` images (twice the optimizer steps in the same
  epochs; on cats/dogs it won 4 of 4 paired runs against 64 at about the same speed, docs/recipes.md),
  64 for larger ones. The size is chosen from the speed at batch 64 (or a smaller --batch-size).
Everything else is the zoo recipe (AdamW, one-cycle, label smoothing, TTA; config.ZOO_RECIPE).
An explicit --model, --image-size, --train-size, --aug or --batch-size is always kept.

When pretrained weights are on this machine (and --no-pretrained is not given), the default recipe fine-tunes
a pretrained backbone instead (`plan_pretrained`): the most accurate entry of ``PRETRAINED_LADDER`` whose frozen
phase — one forward pass per training, validation and test image — fits in ``EXTRACT_SHARE`` of the budget left
after start-up and loading, at the measured forward speed. Its head is fitted on the features computed once
(``config.FROZEN_EPOCHS`` epochs of a logistic regression), and the run stops there: the head has converged, and neither unfreezing nor flips (mirrored features, flip TTA)
paid within these budgets (docs/recipes.md, "Pretrained backbones"). Asking for --epochs fine-tunes instead.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from cnnlab.config import DEFAULT_TIME_BUDGET_S, ZOO_RECIPE, TrainConfig, scratch_augment
from cnnlab.data.augment import matched_test_size, resolve_ops

AUTO_MODEL = "resnet9"
SIZES = (128, 112, 96, 80, 64, 48, 32)
MIN_EPOCHS = 80  # cats/dogs held-out (docs/recipes.md): 96 px x 83 epochs 88.0%, 112 px x 70 86.5%, 128 px x 45 85.8%
SMALLEST = 32
SMALL_DATA = 10_000  # training sets up to this many images train with batches of SMALL_BATCH
SMALL_BATCH = 32

# (model, image size) in order of held-out accuracy of their frozen features on the 2000 cats/dogs photos under
# 5-fold cross-validation (docs/recipes.md): 99.45%, 98.95%, 98.65%, 98.25%, 97.35%, and 128 px last
PRETRAINED_LADDER = (("efficientnet_lite2", 260), ("efficientnet_lite2", 224), ("efficientnet_lite0", 224),
                     ("efficientnet_lite0", 192), ("efficientnet_lite0", 160), ("efficientnet_lite0", 128))
# The frozen phase's forward passes get this share of the budget left after start-up, the probe and the files
# written at the end (FIXED_OVERHEAD_S) and decoding the images (LOAD_S_PER_IMAGE; ~2.5 ms per 500x375 JPEG here)
EXTRACT_SHARE = 0.75
PRETRAINED_MIN_PX = 64  # fixed-size data below this trains from scratch by default (see wants_pretrained)
FIXED_OVERHEAD_S = 8.0
LOAD_S_PER_IMAGE = 0.003


@dataclasses.dataclass
class Plan:
    cfg: TrainConfig
    note: str
    seconds: float  # spent choosing (speed probe), counted in the time budget


def images_per_second(size: int, num_classes: int, channels: int, cfg: TrainConfig, steps: int = 3) -> float:
    """Training speed of the auto model at `size` px on this machine: two warm-up steps, then the fastest of
    `steps` timed ones (the fastest is the least disturbed by whatever else the machine is doing)."""
    from cnnlab.engine.device import resolve_device, resolve_precision
    from cnnlab.engine.model_file import default_normalization
    from cnnlab.engine.trainer import StepContext, train_step
    from cnnlab.models import create_model

    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    bs = min(cfg.batch_size or 64, 64)
    torch_state = torch.get_rng_state()  # the probe must not change the run's random numbers
    try:
        model = create_model(AUTO_MODEL, num_classes, channels, (size, size)).to(device).train()
        model = model.to(memory_format=torch.channels_last)
        ctx = StepContext(model, torch.optim.AdamW(model.parameters(), 1e-4), cfg, default_normalization(channels),
                          device, precision, num_classes, check_finite=False)
        x = torch.randint(0, 256, (bs, size, size, channels), dtype=torch.uint8)  # what the loader hands the step
        y = torch.arange(bs) % max(num_classes, 2)
        best = float("inf")
        for i in range(steps + 2):
            t0 = time.perf_counter()
            train_step(ctx, x, y)  # the training step itself, as fit runs it (without augmentation)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_rng_state(torch_state)
    return bs / max(best, 1e-9)


def choose_size(n_train: int, budget: float, num_classes: int, channels: int, cfg: TrainConfig,
                largest: int | None = None) -> tuple[int, float]:
    """The largest candidate size whose measured speed gives MIN_EPOCHS epochs of n_train images in `budget`;
    when none does, the size that gives the most epochs (below 64 px the net keeps full resolution in its
    stem, so the smallest size is not always the fastest)."""
    candidates = [s for s in SIZES if largest is None or s <= largest] or [SMALLEST]
    tried: list[tuple[float, int]] = []
    for size in candidates:
        epochs = budget * images_per_second(size, num_classes, channels, cfg) / (1.15 * max(n_train, 1))
        if epochs >= MIN_EPOCHS:
            return size, epochs
        tried.append((epochs, size))
    epochs, size = max(tried)
    return size, epochs


def forward_images_per_second(model_name: str, size: int, channels: int, cfg: TrainConfig) -> float:
    """Eval-mode forward speed of a pretrained-capable model at `size` px (the frozen phase's cost), in the
    batches the frozen phase uses: one warm-up batch, then the faster of two timed ones."""
    from cnnlab.engine.device import autocast, resolve_device, resolve_precision
    from cnnlab.engine.inference import inference_batch_size
    from cnnlab.models import create_model

    device = resolve_device(cfg.device)
    torch_state = torch.get_rng_state()
    try:
        model = create_model(model_name, 2, channels, (size, size)).to(device).eval()
        batch = inference_batch_size(size, size)
        precision = resolve_precision(cfg.precision, device, model)
        x = torch.rand(batch, channels, size, size, device=device).contiguous(memory_format=torch.channels_last)
        best = float("inf")
        with torch.inference_mode():
            for i in range(3):
                t0 = time.perf_counter()
                with autocast(device, precision):
                    model.forward_features(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i:
                    best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_rng_state(torch_state)
    return batch / max(best, 1e-9)


def pretrained_available(model_name: str) -> bool:
    """The model's default weights are on this machine (cache or installed package): no network needed."""
    from cnnlab.models.pretrained import default_weights, offline_source

    ws = default_weights(model_name)
    return ws is not None and offline_source(ws) is not None


def wants_pretrained(cfg: TrainConfig, native: tuple[int, int] | None = None) -> bool:
    """The default recipe fine-tunes a pretrained backbone unless told not to, or no weights are offline, or the
    data are small fixed-size images (under PRETRAINED_MIN_PX: ImageNet features of 32 px digits scored 61.7%
    where the from-scratch recipe scores ~99%), or --train-size asks for the from-scratch crop recipe."""
    if cfg.pretrained or cfg.weights or cfg.freeze or cfg.freeze_epochs:  # fine-tuning asked for in words
        return True
    if cfg.pretrained is False or cfg.train_size or (native is not None and min(native) < PRETRAINED_MIN_PX):
        return False
    return any(pretrained_available(m) for m, _ in PRETRAINED_LADDER)


def plan_pretrained(cfg: TrainConfig, n_train: int, n_eval: int, native: tuple[int, int] | None, channels: int) -> Plan:
    """The pretrained default: the first PRETRAINED_LADDER entry whose frozen phase fits the budget (image
    folders and fixed-size data alike: images are resized to it). n_eval: validation + test images."""
    t0 = time.perf_counter()
    budget = cfg.time_budget or DEFAULT_TIME_BUDGET_S
    ladder = [e for e in PRETRAINED_LADDER if pretrained_available(e[0]) or cfg.pretrained or cfg.weights]
    if cfg.weights:  # the weights name the architecture
        from cnnlab.models.pretrained import CATALOGUE

        arch = CATALOGUE[cfg.weights].model if cfg.weights in CATALOGUE else PRETRAINED_LADDER[-1][0]
        ladder = [e for e in ladder if e[0] == arch] or [(arch, 224)]
    speeds: dict[str, tuple[int, float]] = {}
    choice, why = ladder[-1], ""
    for model_name, size in ladder:
        if cfg.image_size is not None:
            size = cfg.image_size
        if model_name not in speeds:  # measured once per model, scaled by pixels for the other sizes
            speeds[model_name] = (size, forward_images_per_second(model_name, size, channels, cfg))
        at, speed = speeds[model_name]
        per_s = speed * (at / size) ** 2
        seconds = (n_train + n_eval) / per_s
        choice, why = (model_name, size), f"its frozen features take ~{seconds:.0f}s of the {budget:g}s budget here"
        if seconds <= EXTRACT_SHARE * (budget - FIXED_OVERHEAD_S - LOAD_S_PER_IMAGE * (n_train + n_eval)):
            break
    model_name, size = choice
    changes: dict = {"model": model_name, "pretrained": True}
    if cfg.epochs is None and cfg.freeze_epochs is None:  # no epochs asked for: the frozen phase alone (see the module doc)
        changes["freeze"] = True
        if cfg.augment == "auto":
            changes["augment"] = "none"  # features computed once, unflipped: mirrored copies did not help (module doc)
        if cfg.tta is None:
            changes["tta"] = False
    if cfg.image_size is None:  # fixed-size data too: the backbone sees its own resolution (images are resized)
        changes["image_size"] = size
    if cfg.batch_size is None:
        changes["batch_size"] = SMALL_BATCH
    new = dataclasses.replace(cfg, **changes)
    shown = new.image_size or min(native or (size, size))
    how = "frozen backbone + new head" if changes.get("freeze") else "fine-tuned after a frozen phase"
    note = (f"auto: pretrained {model_name} at {shown} px, {how} ({why}) — pass --model, --image-size, --epochs (to unfreeze)"
            " or --no-pretrained to choose yourself")
    return Plan(new, note, time.perf_counter() - t0)


def plan(cfg: TrainConfig, n_train: int, native: tuple[int, int] | None, num_classes: int, channels: int, n_eval: int = 0) -> Plan:
    """Fill in model, image size, augmentation and batch size for a cfg whose model is 'auto'.

    native: (H, W) of fixed-size data, None for image folders (their files have many sizes). The budget is
    cfg.time_budget, else the default. n_eval: validation + test images the run will score (0: unknown).
    """
    if wants_pretrained(cfg, native):
        return plan_pretrained(cfg, n_train, n_eval, native, channels)
    t0 = time.perf_counter()
    budget = cfg.time_budget or DEFAULT_TIME_BUDGET_S
    changes: dict = {"model": AUTO_MODEL}
    size = cfg.image_size
    crops_from = None  # image folders with --train-size: random crops of larger images, evaluated whole
    if size is not None:
        why = "as asked"
    elif native is None and cfg.train_size:
        size = crops_from = cfg.train_size  # replaced by the evaluation size below when the augmentation crops
        why = "as asked"
    elif native is None:
        size, epochs = choose_size(n_train, budget, num_classes, channels, cfg)
        why = f"~{epochs:.0f} epochs of {n_train} images fit in {budget:g}s here"
    elif min(native) < SMALLEST:
        size, why = SMALLEST, f"upscaled from {min(native)} px"
    else:
        size = min(native)
        epochs = budget * images_per_second(size, num_classes, channels, cfg) / (1.15 * max(n_train, 1))
        why = f"the data's size; ~{epochs:.0f} epochs fit in {budget:g}s here"
        if epochs < MIN_EPOCHS and size > SMALLEST:
            size, epochs = choose_size(n_train, budget, num_classes, channels, cfg, largest=size - 1)
            why = f"scaled down from {min(native)} px: ~{epochs:.0f} epochs of {n_train} images fit in {budget:g}s here"
        else:
            size = None  # keep the data as it is (it may not be square)
    shown = size or min(native or (0, 0))
    if cfg.augment == "auto":
        changes["augment"] = scratch_augment(channels, shown)
    at = f"at {shown} px"
    if crops_from is not None:  # load the images as large as the crops magnify: training crops them, evaluation sees them whole
        eval_size = matched_test_size(resolve_ops(changes.get("augment", cfg.augment), cfg.aug_args), crops_from)
        if eval_size != crops_from:
            size, changes["train_size"] = eval_size, crops_from
            at = f"trained on {crops_from} px crops of {eval_size} px images"
        else:  # no crops to match: one size for training and evaluation
            changes["train_size"] = None
    if size is not None:
        changes["image_size"] = size
    if cfg.batch_size is None:
        changes["batch_size"] = SMALL_BATCH if n_train <= SMALL_DATA else ZOO_RECIPE["batch_size"]
    new = dataclasses.replace(cfg, **changes)
    note = (f"auto: {AUTO_MODEL} {at} ({why}), augmentation {new.augment}, batch {new.batch_size}"
            " — pass --model, --image-size, --train-size, --aug or --batch-size to choose yourself")
    return Plan(new, note, time.perf_counter() - t0)
