"""ONNX export with the preprocessing inside the graph, checked against PyTorch before writing.

The exported graph takes what a user has: uint8 images (N, H, W, C) at the model's input size, and
returns `logits` (N, K_out) and `probabilities` (N, K). Cast, NHWC->NCHW, scaling and mean/std
normalisation are part of the graph, so a consumer needs no cnnlab code; the JSON sidecar
(`<file>.json`) still documents them together with the class names and input shape.

We use the TorchScript-based exporter (`dynamo=False`): it needs no extra packages (the
torch.export-based one needs onnxscript) and handles every model in our registry.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from cnnlab.engine.inference import predict_logits, probabilities
from cnnlab.engine.io import atomic_path
from cnnlab.engine.predictor import Classifier
from cnnlab.errors import ConfigError, ModelError

MAX_ABS_DIFF = 1e-4  # fp32 tolerance between onnxruntime and PyTorch logits
DEFAULT_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probabilities")


class _Preprocessed(nn.Module):
    """uint8 NHWC in -> the model's logits and class probabilities out (same maths as inference.to_input)."""

    def __init__(self, model: nn.Module, norm: dict, channels: int):
        super().__init__()
        self.model = model
        self.scale = float(norm["scale"])
        mean = norm.get("mean") or [0.0] * channels
        std = norm.get("std") or [1.0] * channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor):
        x = images.permute(0, 3, 1, 2).float() * self.scale
        x = (x - self.mean) / self.std
        logits = self.model(x)
        if logits.shape[1] == 1:  # one-logit binary head: [1 - p, p], as inference.probabilities
            p = torch.sigmoid(logits)
            probs = torch.cat([1 - p, p], dim=1)
        else:
            probs = torch.softmax(logits, dim=1)
        return logits, probs


def default_output_path(source: Path) -> Path:
    """<run>/model.onnx for a run folder, <file stem>.onnx next to a model file."""
    return source / "model.onnx" if source.is_dir() else source.with_suffix(".onnx")


def sidecar_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name + ".json")


def check_images(clf: Classifier, n: int = 6, seed: int = 0) -> np.ndarray:
    """Check inputs that cover the pixel range: random noise, flat black/white/grey and gradients."""
    c, h, w = clf.input_shape
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)
    x[0] = 0
    x[1] = 255
    x[2] = 128
    x[3] = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None]
    return x


def _session(model_bytes: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def export_onnx(
    run_or_model: str | Path,
    out: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    images: np.ndarray | None = None,
    tolerance: float = MAX_ABS_DIFF,
) -> dict:
    """Export, verify in onnxruntime (fails above `tolerance`), then write the .onnx and its JSON sidecar.

    Returns {"path", "sidecar", "max_abs_diff", "checked_batch_sizes", "opset", "model", "class_names"}.
    """
    if not 7 <= int(opset) <= 21:
        raise ConfigError(f"--opset {opset} is not supported — use an opset between 7 and 21 (default {DEFAULT_OPSET})")
    src = Path(run_or_model)
    clf = Classifier.load(src)
    c, h, w = clf.input_shape
    out_path = Path(out) if out is not None else default_output_path(src)
    if out_path.suffix.lower() != ".onnx":
        raise ConfigError(f"--out {out_path}: the file name must end in .onnx")
    if not out_path.parent.is_dir():
        raise ConfigError(f"--out {out_path}: folder {out_path.parent} does not exist — create it first")

    model_bytes = build_onnx_bytes(clf, opset, label=str(src))
    x = check_images(clf) if images is None else np.ascontiguousarray(images, dtype=np.uint8)
    max_diff, sizes = verify_onnx(clf, _session(model_bytes), x, tolerance, label=str(src))

    sidecar = sidecar_info(clf, opset)
    with atomic_path(out_path) as tmp:
        Path(tmp).write_bytes(model_bytes)
    with atomic_path(sidecar_path(out_path)) as tmp:
        Path(tmp).write_text(json.dumps(sidecar, indent=2) + "\n")
    return {"path": str(out_path), "sidecar": str(sidecar_path(out_path)), "max_abs_diff": max_diff,
            "checked_batch_sizes": sizes, "opset": int(opset), "model": clf.meta["model"], "class_names": clf.class_names}


def verify_onnx(clf: Classifier, sess, x: np.ndarray, tolerance: float = MAX_ABS_DIFF, label: str = "model") -> tuple[float, list[int]]:
    """Max abs difference of logits and probabilities vs PyTorch on batch sizes 1 and len(x); raises above tolerance."""
    ref_logits = predict_logits(clf.model, x, clf.meta["normalization"], torch.device("cpu"), "fp32")
    ref_probs = probabilities(ref_logits).numpy()
    max_diff, sizes = 0.0, []
    for n in sorted({1, len(x)}):  # two batch sizes: the batch axis must really be dynamic
        logits, probs = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: x[:n]})
        max_diff = max(max_diff, float(np.max(np.abs(logits - ref_logits[:n].numpy()))), float(np.max(np.abs(probs - ref_probs[:n]))))
        sizes.append(n)
    if not np.isfinite(max_diff) or max_diff > tolerance:
        raise ModelError(f"{label}: ONNX output differs from PyTorch by {max_diff:.3g} (> {tolerance:g}); nothing was written — report this model/opset combination")
    return max_diff, sizes


def build_onnx_bytes(clf: Classifier, opset: int = DEFAULT_OPSET, label: str = "model") -> bytes:
    """The ONNX model (with preprocessing and metadata) as bytes; not yet verified."""
    c, h, w = clf.input_shape
    wrapped = _Preprocessed(clf.model.float().eval(), clf.meta["normalization"], c).eval()
    example = torch.zeros(2, h, w, c, dtype=torch.uint8)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped, (example,), buf, dynamo=False, opset_version=int(opset),
                input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                dynamic_axes={INPUT_NAME: {0: "batch"}, **{o: {0: "batch"} for o in OUTPUT_NAMES}},
            )
    except Exception as e:  # an operator without an ONNX mapping at this opset, etc.
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelError(f"{label}: model {clf.meta['model']!r} cannot be exported to ONNX opset {opset} ({first}) — try a newer --opset") from None
    return _with_metadata(buf.getvalue(), clf)


def sidecar_info(clf: Classifier, opset: int) -> dict:
    c, h, w = clf.input_shape
    return {
        "format": "cnnlab-onnx",
        "model": clf.meta["model"],
        "model_args": clf.meta.get("model_args", {}),
        "class_names": clf.class_names,
        "opset": int(opset),
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", h, w, c], "layout": "NHWC",
                  "resize": clf.meta.get("resize", "squash")},
        "outputs": {"logits": ["batch", len(clf.class_names) if len(clf.class_names) > 2 else 1],
                    "probabilities": ["batch", len(clf.class_names)]},
        "preprocessing_in_graph": True,
        "normalization": clf.meta["normalization"],
        "preprocessing": "x = (float(images) * scale - mean) / std per channel, then NHWC -> NCHW; all inside the graph",
    }


def _with_metadata(model_bytes: bytes, clf: Classifier) -> bytes:
    """Store class names and normalisation in the ONNX file itself too (metadata_props)."""
    import onnx

    proto = onnx.load_from_string(model_bytes)
    for key, value in (("cnnlab_model", clf.meta["model"]), ("class_names", json.dumps(clf.class_names)),
                       ("normalization", json.dumps(clf.meta["normalization"])), ("input_layout", "NHWC uint8")):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "cnnlab"
    return proto.SerializeToString()
