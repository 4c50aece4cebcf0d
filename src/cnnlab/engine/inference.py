"""Batched forward passes shared by training, evaluation and prediction.

Images travel as uint8 (N, H, W, C); `to_input` turns a batch into a normalised float NCHW tensor.
Permuting NHWC to NCHW gives channels_last memory for free, the layout the CPU conv kernels prefer.

Labels are class ids (N,), or multi-hot rows (N, C) for multi-label data (engine/multilabel.py): the loss is then
binary cross-entropy on each of the C sigmoid outputs, accuracy the share of label decisions right at 0.5 (fastai's
accuracy_multi), and scoring a split adds its mAP ("map").
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.engine.device import autocast
from cnnlab.engine.multilabel import mean_average_precision


# Images per inference batch: ~1.1 megapixels a batch (16 images of 260 px, 256 of 64 px, at most 256).
# Large batches of large images run slower on a CPU (caches): EfficientNet-Lite2 at 260 px scored 56 img/s in
# batches of 16, 42 in batches of 64 and 24 in batches of 256 here.
INFERENCE_BATCH_PIXELS = 1_100_000


def inference_batch_size(h: int, w: int) -> int:
    return max(8, min(256, INFERENCE_BATCH_PIXELS // max(1, h * w)))


def to_input(x: torch.Tensor, norm: dict, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in channels_last memory, scaled and normalised."""
    x = x.to(device, non_blocking=True).permute(0, 3, 1, 2).float().mul_(norm["scale"])
    mean, std = norm.get("mean"), norm.get("std")
    if mean is not None and any(m != 0.0 for m in mean) or std is not None and any(s != 1.0 for s in std):
        m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, device=device).view(1, -1, 1, 1)
        x = x.sub_(m).div_(s)
    return x


def is_binary_head(logits: torch.Tensor) -> bool:
    return logits.shape[1] == 1


def loss_fn(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy on one sigmoid output (the seed's head) or cross-entropy over K outputs; multi-hot
    labels (N, C): binary cross-entropy on each output, averaged over the C classes per image."""
    logits = logits.float()
    if y.ndim == 2:
        per = F.binary_cross_entropy_with_logits(logits, y.float(), reduction="none").mean(1)
        return per if reduction == "none" else per.sum() if reduction == "sum" else per.mean()
    if is_binary_head(logits):
        return F.binary_cross_entropy_with_logits(logits[:, 0], y.float(), reduction=reduction)
    return F.cross_entropy(logits, y, reduction=reduction)


def predicted_class(logits: torch.Tensor) -> torch.Tensor:
    if is_binary_head(logits):
        return (logits[:, 0] > 0).long()
    return logits.argmax(1)


def correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per image: 1.0 when the predicted class is right, else 0.0; multi-hot labels: the share of its C labels decided
    right at probability 0.5 (logit 0)."""
    if y.ndim == 2:
        return ((logits >= 0) == y.bool()).float().mean(1)
    return (predicted_class(logits) == y).float()


def correct_count(logits: torch.Tensor, y: torch.Tensor) -> int | float:
    """Images predicted right in a batch (multi-hot labels: the sum of each image's share of labels right)."""
    total = correct(logits, y).sum()
    return float(total) if y.ndim == 2 else int(total)


def probabilities(logits: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """(N, K) class probabilities; for the one-output binary head [1 - p, p]; multi_label: a sigmoid per class."""
    logits = logits.float()
    if multi_label:
        return torch.sigmoid(logits)
    if is_binary_head(logits):
        p = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


@torch.inference_mode()
def predict_logits(
    model: nn.Module, x: np.ndarray | torch.Tensor, norm: dict, device: torch.device, precision: str = "fp32", batch_size: int | None = None,
    tta: bool = False,
) -> torch.Tensor:
    """Logits (float32, on CPU) for a uint8 (N, H, W, C) array, in eval mode.

    tta: test-time augmentation — average the logits of each image and its horizontal mirror, at each of
    tta_scales(model).
    """
    xt = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    batch_size = batch_size or inference_batch_size(xt.shape[1], xt.shape[2])
    return _logits(model, (xt[i : i + batch_size] for i in range(0, len(xt), batch_size)), norm, device, precision, tta)


def tta_scales(model: nn.Module) -> tuple[float | None, ...]:
    """The eval-time input scales test-time augmentation averages over (each with its mirror): a model that
    enlarges its eval inputs (test_scale s > 1, from training on random resized crops) is scored both at the
    size it trained at and enlarged by s — on cats vs dogs the pair beat either scale alone on the runs'
    validation images (docs/recipes.md); (None,): the model as it is."""
    s = getattr(getattr(model, "module", model), "test_scale", 1.0)
    return (1.0, s) if s != 1.0 else (None,)


def tta_label(model: nn.Module) -> str:
    """How test-time augmentation scores with this model, in words."""
    return "flip TTA at 2 scales" if len(tta_scales(model)) > 1 else "flip TTA"


def _logits(model: nn.Module, batches, norm: dict, device: torch.device, precision: str, tta: bool) -> torch.Tensor:
    """Concatenated eval-mode logits of uint8 NHWC batches."""
    was_training = model.training
    model.eval()
    outs = []
    try:
        net = getattr(model, "module", model)  # the network itself, inside a DDP wrapper
        scales = tta_scales(model) if tta else (None,)
        kept = getattr(net, "test_scale", None)
        for xb_u8 in batches:
            with autocast(device, precision):
                xb = to_input(xb_u8, norm, device)
                out = 0
                for scale in scales:
                    if scale is not None:
                        net.test_scale = scale
                    out = out + model(xb).float()
                    if tta:
                        out = out + model(xb.flip(3)).float()
                out = out / (len(scales) * (2 if tta else 1))
                outs.append(out.cpu())
    finally:
        model.train(was_training)
        if kept is not None:
            net.test_scale = kept
    if not outs:
        return torch.empty(0, 1)
    return torch.cat(outs)


def evaluate_arrays(model, x, y, norm, device, precision="fp32", batch_size=None, tta: bool = False) -> dict:
    """Loss and accuracy over a whole split (loss averaged over images); tta as in predict_logits."""
    logits = predict_logits(model, x, norm, device, precision, batch_size, tta=tta)
    return metrics_from_logits(logits, y)


def metrics_from_logits(logits: torch.Tensor, y) -> dict:
    """Loss (averaged over images) and accuracy of a split's logits (also used on logits gathered from ranks)."""
    return _score(logits, torch.as_tensor(np.asarray(y), dtype=torch.long))


def _score(logits: torch.Tensor, yt: torch.Tensor) -> dict:
    loss = float(loss_fn(logits, yt)) if len(yt) else float("nan")
    acc = float(correct(logits, yt).sum()) / len(yt) if len(yt) else float("nan")
    ev = {"loss": loss, "accuracy": acc, "n": int(len(yt)), "logits": logits}
    if yt.ndim == 2:  # multi-label: the threshold-free score that picks the best epoch
        m = mean_average_precision(yt.numpy(), torch.sigmoid(logits.float()).numpy()) if len(yt) else None
        ev["map"] = float("nan") if m is None else m
    return ev


@torch.inference_mode()
def evaluate_on_split(model, split, norm, device, precision="fp32", batch_size=None, tta: bool = False) -> dict:
    """evaluate_arrays for a Split held in memory or streamed from disk (worker processes decode its batches).

    Adds "index": the positions in the split of the images scored (all of them unless streamed files failed
    to decode; those are left out and recorded in the dataset's bad files).
    """
    from cnnlab.data.loader import BatchReader, is_streamed

    batch_size = batch_size or inference_batch_size(split.x.shape[1], split.x.shape[2])
    if not is_streamed(split):
        return {**evaluate_arrays(model, split.x, split.y, norm, device, precision, batch_size, tta=tta), "index": np.arange(len(split))}
    ys, index = [], []

    def images():
        for b in BatchReader(split).batches(batch_size):
            ys.append(b.y)
            index.append(b.index)
            yield b.x

    logits = _logits(model, images(), norm, device, precision, tta)
    ev = _score(logits, torch.cat(ys) if ys else torch.empty(0, dtype=torch.long))
    return {**ev, "index": torch.cat(index).numpy() if index else np.zeros(0, dtype=np.int64)}
