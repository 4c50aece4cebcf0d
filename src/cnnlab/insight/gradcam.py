"""Grad-CAM and Grad-CAM++: which pixels made the model choose a class.

Layers are found through the uniform model interface, never by name guessing: we run
`model.forward_features` once with forward hooks on every `nn.Conv2d` and record the order in which
they execute. The default layer is the last conv executed inside `forward_features` (the most
semantic one that still has a spatial map). Works for any registry model, including layer lists.

Grad-CAM in five steps:
  1. forward the image, keeping the chosen layer's rectified activations A = ReLU(conv output), K maps of h x w;
  2. back-propagate the class score (logit) to get dScore/dA;
  3. weight each map: Grad-CAM averages the gradient over space, Grad-CAM++ weights positive
     gradients by alpha = g^2 / (2 g^2 + sum(A) g^3) (Chattopadhyay et al. 2018);
  4. ReLU(sum_k w_k A_k): keep what speaks *for* the class;
  5. upsample to the input size and scale to [0, 1] (eps-guarded: flat gradients give zeros, not NaN).

A multi-label model has one sigmoid output per class: the score of a class is its own logit, so the same steps explain
each label; `labels_to_explain` picks every label at or above its threshold (the most probable one when none is).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.errors import ConfigError, DataError

EPS = 1e-8
METHODS = ("gradcam", "gradcam++")


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(x))


@contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def conv_layers(model: nn.Module, x: torch.Tensor | None = None, input_shape: tuple[int, int, int] | None = None) -> list[tuple[str, nn.Conv2d]]:
    """(name, module) of every nn.Conv2d that runs inside `forward_features`, in execution order.

    `x` is one input batch; without it a zero image of `input_shape` (C, H, W) is used.
    """
    if x is None:
        if input_shape is None:
            raise ValueError("conv_layers needs an input x or input_shape (C, H, W)")
        x = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
    names = {m: n for n, m in model.named_modules()}
    order: list[tuple[str, nn.Conv2d]] = []
    seen: set[int] = set()

    me = threading.get_ident()  # a server may run the same model in other threads meanwhile: ignore their calls

    def record(module, inputs, output):
        if threading.get_ident() == me and id(module) not in seen:
            seen.add(id(module))
            order.append((names.get(module, type(module).__name__), module))

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad(), _eval_mode(model):
            model.forward_features(x[:1])
    finally:
        for h in handles:
            h.remove()
    return order


def resolve_layer(model: nn.Module, x: torch.Tensor, layer: str | None = None) -> tuple[str, nn.Conv2d]:
    """The named conv layer (default: the last one executed in forward_features)."""
    layers = conv_layers(model, x)
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no Conv2d layer in forward_features — Grad-CAM needs a convolutional layer")
    if layer is None:
        return layers[-1]
    for name, module in layers:
        if name == layer:
            return name, module
    raise ConfigError(f"no conv layer {layer!r} in this model — valid layers: {', '.join(n for n, _ in layers)}")


def class_score(logits: torch.Tensor, class_idx: int) -> torch.Tensor:
    """The score to explain: the class logit; with the one-output binary head, +logit (class 1) or -logit (class 0)."""
    if logits.shape[1] == 1:
        return logits[0, 0] if class_idx == 1 else -logits[0, 0]
    return logits[0, class_idx]


def predicted_index(logits: torch.Tensor) -> int:
    return int(logits[0, 0] > 0) if logits.shape[1] == 1 else int(logits[0].argmax())


def _activations_and_gradients(model: nn.Module, x: torch.Tensor, module: nn.Module, class_idx: int | None):
    store: dict = {}
    me = threading.get_ident()

    def keep(mod, inputs, output):
        if threading.get_ident() != me:
            return
        # Clone: a following ReLU(inplace=True) would otherwise overwrite what we saved.
        store["act"] = output.detach().clone()
        output.register_hook(lambda g: store.__setitem__("grad", g.detach().clone()))

    handle = module.register_forward_hook(keep)
    try:
        # inference_mode(False): callers (a server) may hold inference mode, which enable_grad cannot undo
        with torch.inference_mode(False), torch.enable_grad(), _eval_mode(model):
            xg = x.detach().clone().requires_grad_(True)  # a graph exists even if the weights are frozen
            logits = _logits(model, xg).float()
            if class_idx is None:
                class_idx = predicted_index(logits)
            n_out = logits.shape[1]
            n_classes = 2 if n_out == 1 else n_out
            if not 0 <= class_idx < n_classes:
                raise ConfigError(f"class index {class_idx} is out of range for a model with {n_classes} classes")
            model.zero_grad(set_to_none=True)
            class_score(logits, class_idx).backward()
            model.zero_grad(set_to_none=True)
    finally:
        handle.remove()
    if "act" not in store or "grad" not in store:
        raise ConfigError("the chosen layer does not take part in computing the class score — choose another --layer")
    return store["act"].float(), store["grad"].float()


def gradcam(model: nn.Module, x: torch.Tensor, class_idx: int | None = None, layer: str | None = None, method: str = "gradcam") -> np.ndarray:
    """Heatmap float32 (H, W) in [0, 1] for one normalised input x (1, C, H, W); never NaN.

    `class_idx` defaults to the predicted class; `layer` to the last conv in forward_features;
    `method` is "gradcam" or "gradcam++".
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r} — choose one of: {', '.join(METHODS)}")
    if x.ndim != 4 or x.shape[0] != 1:
        raise DataError(f"gradcam takes one image as a (1, C, H, W) tensor, got shape {tuple(x.shape)}")
    _, module = resolve_layer(model, x, layer)
    act, grad = _activations_and_gradients(model, x, module, class_idx)   # steps 1-2: (1, K, h, w) each
    # A conv's raw output is a pre-activation (often negative through its bias); what flows on is ReLU(A).
    # For conv -> [pool] -> ReLU nets this is exactly Grad-CAM on the post-ReLU map, whose gradient is
    # dScore/dA where A > 0 (and 0 elsewhere) — the gradient we already hold.
    act = F.relu(act)
    if method == "gradcam":
        weights = grad.mean(dim=(2, 3), keepdim=True)                     # step 3: average gradient per map
    else:
        g2, g3 = grad.pow(2), grad.pow(3)
        denom = 2 * g2 + act.sum(dim=(2, 3), keepdim=True) * g3
        alpha = g2 / torch.where(denom.abs() > EPS, denom, torch.full_like(denom, EPS))
        weights = (alpha * F.relu(grad)).sum(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(dim=1, keepdim=True))                # step 4
    cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[0, 0]  # step 5
    cam = torch.nan_to_num(cam, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0)
    cam = cam - cam.min()
    peak = float(cam.max())
    cam = cam / peak if peak > EPS else torch.zeros_like(cam)
    return cam.clamp(0, 1).cpu().numpy().astype(np.float32)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] heatmap (jet colours) over a uint8 (H, W, C) image (C 1 or 3); uint8 (H, W, 3) RGB."""
    from matplotlib import colormaps

    img = np.asarray(image)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3):
        raise DataError(f"overlay needs an image (H, W, 1|3), got shape {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0).clip(0, 1)
    if heat.shape != img.shape[:2]:
        t = torch.from_numpy(heat)[None, None]
        heat = F.interpolate(t, size=img.shape[:2], mode="bilinear", align_corners=False)[0, 0].numpy().clip(0, 1)
    colours = colormaps["jet"](heat)[:, :, :3] * 255.0
    out = (1 - alpha) * img.astype(np.float32) + alpha * colours
    return out.round().clip(0, 255).astype(np.uint8)


def fit_channels(image: np.ndarray, channels: int) -> tuple[np.ndarray, str | None]:
    """Convert (H, W, C) to the model's channel count; returns (image, note-or-None)."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[:, :, None]
    c = img.shape[2]
    if c == channels:
        return img, None
    if c == 4:
        img, c = img[:, :, :3], 3
        if channels == 3:
            return img, "dropped the alpha channel"
    if c == 3 and channels == 1:
        grey = (img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).round().clip(0, 255)
        return grey.astype(np.uint8)[:, :, None], "converted RGB to greyscale for a 1-channel model"
    if c == 1 and channels == 3:
        return np.repeat(img, 3, axis=2), "converted greyscale to RGB for a 3-channel model"
    raise DataError(f"image has {c} channels but the model expects {channels}")


def labels_to_explain(clf, image: np.ndarray) -> tuple[list[str], bool]:
    """A multi-label model's labels for one uint8 (H, W, C) image at its input size: every label at or above its
    threshold, most probable first, and True; or, when none is, the most probable label and False."""
    img = np.array(fit_channels(np.asarray(image), clf.input_shape[0])[0], copy=True)
    probs = clf.predict_proba(img[None])[0]
    order = np.argsort(-probs, kind="stable")
    above = [clf.class_names[i] for i in order if probs[i] >= clf.thresholds[i]]
    return (above, True) if above else ([clf.class_names[int(order[0])]], False)


def explain_image(clf, image: np.ndarray, class_name: str | None = None, layer: str | None = None, method: str = "gradcam") -> dict:
    """Grad-CAM of one uint8 (H, W, C) image at the model's input size for a loaded Classifier.

    Returns {"class", "probability", "heatmap" (H, W) float32, "overlay" uint8 (H, W, 3), "layer"}.
    The class is `class_name` if given, else the predicted one (multi-label: the most probable label; its probability
    is that class's own sigmoid); an image with the wrong channel count is converted (RGB <-> greyscale).
    """
    from cnnlab.engine.inference import to_input

    c, h, w = clf.input_shape
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise DataError(f"explain_image needs a uint8 image, got {img.dtype}")
    img = np.array(fit_channels(img, c)[0], copy=True)  # writable and contiguous for torch.from_numpy
    if img.shape[:2] != (h, w):
        raise DataError(f"image is {img.shape[0]}x{img.shape[1]} but the model expects {h}x{w} — resize it first (clf.load_image does)")
    names = clf.class_names
    probs = clf.predict_proba(img[None])[0]
    if class_name is None:
        idx = int(np.argmax(probs))
    elif class_name in names:
        idx = names.index(class_name)
    else:
        raise ConfigError(f"unknown class {class_name!r} — this model's classes: {', '.join(names)}")
    x = to_input(torch.from_numpy(np.ascontiguousarray(img[None])), clf.meta["normalization"], clf.device)
    layer_name, _ = resolve_layer(clf.model, x, layer)
    heat = gradcam(clf.model, x, class_idx=idx, layer=layer_name, method=method)
    return {"class": names[idx], "probability": float(probs[idx]), "heatmap": heat,
            "overlay": overlay(img, heat), "layer": layer_name}
