"""ONNX export with the preprocessing inside the graph, checked against PyTorch before writing.

The exported graph takes what a user has: uint8 images (N, H, W, C) at the model's input size, and
returns `logits` (N, K_out) and `probabilities` (N, K). Cast, NHWC->NCHW, scaling and mean/std
normalisation are part of the graph, so a consumer needs no cnnlab code; the JSON sidecar
(`<file>.json`) still documents them together with the class names and input shape. A multi-label model's
`probabilities` are one sigmoid per class (rows do not sum to 1); its description adds `task: "multi_label"` and
the per-class `thresholds` a label is predicted at (probability >= threshold).

We use the TorchScript-based exporter (`dynamo=False`): it needs no extra packages (the
torch.export-based one needs onnxscript) and handles every model in our registry.

This graph is also the starting point of the fp16, int8 and OpenVINO exports (export/formats.py).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from cnnlab.engine.predictor import Classifier
from cnnlab.errors import ModelError, first_line
from cnnlab.export.checks import FP32_MAX_ABS_DIFF, check_fp32
from cnnlab.export.runtime import INFO_KEY
from cnnlab.export.runtime import sidecar_path as sidecar_path

MAX_ABS_DIFF = FP32_MAX_ABS_DIFF  # fp32 tolerance between onnxruntime and PyTorch logits
DEFAULT_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probabilities")


class _Preprocessed(nn.Module):
    """uint8 NHWC in -> the model's logits and class probabilities out (same maths as inference.to_input and
    inference.probabilities; multi_label: a sigmoid per class)."""

    def __init__(self, model: nn.Module, norm: dict, channels: int, multi_label: bool | None = None):
        super().__init__()
        self.model = model
        # (None: as the model says: models.layers.one_output_per_class tags multi-label models, which load_model_file rebuilds)
        self.multi_label = getattr(model, "cnnlab_task", None) == "multi_label" if multi_label is None else multi_label
        self.scale = float(norm["scale"])
        mean = norm.get("mean") or [0.0] * channels
        std = norm.get("std") or [1.0] * channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor):
        x = images.permute(0, 3, 1, 2).float() * self.scale
        x = (x - self.mean) / self.std
        logits = self.model(x)
        if self.multi_label:
            probs = torch.sigmoid(logits)
        elif logits.shape[1] == 1:  # one-logit binary head: [1 - p, p], as inference.probabilities
            p = torch.sigmoid(logits)
            probs = torch.cat([1 - p, p], dim=1)
        else:
            probs = torch.softmax(logits, dim=1)
        return logits, probs


def default_output_path(source: Path) -> Path:
    """<run>/model.onnx for a run folder, <file stem>.onnx next to a model file."""
    return source / "model.onnx" if source.is_dir() else source.with_suffix(".onnx")


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

    `export_model(..., format="onnx")` (export/formats.py) with this function's older signature. Returns
    {"path", "sidecar", "max_abs_diff", "checked_batch_sizes", "opset", "model", "class_names", ...}.
    """
    from cnnlab.export.formats import export_model

    return export_model(run_or_model, out, "onnx", opset=opset, check_images=images, tolerance=tolerance)


def verify_onnx(clf: Classifier, sess, x: np.ndarray, tolerance: float = MAX_ABS_DIFF, label: str = "model") -> tuple[float, list[int]]:
    """Max abs difference of logits and probabilities vs PyTorch on batch sizes 1 and len(x); raises above tolerance."""
    def run(batch):
        logits, probs = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        return logits, probs

    return check_fp32(clf, run, np.ascontiguousarray(x, dtype=np.uint8), tolerance, label, what="ONNX")


def build_onnx_bytes(clf: Classifier, opset: int = DEFAULT_OPSET, label: str = "model") -> bytes:
    """The ONNX model (with preprocessing and metadata) as bytes; not yet verified."""
    c, h, w = clf.input_shape
    wrapped = _Preprocessed(clf.model.float().eval(), clf.meta["normalization"], c, clf.multi_label).eval()
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
        raise ModelError(f"{label}: model {clf.meta['model']!r} cannot be exported to ONNX opset {opset} ({first_line(e)}) — try a newer --opset") from None
    return _with_metadata(buf.getvalue(), clf)


def sidecar_info(clf: Classifier, opset: int | None = DEFAULT_OPSET, format: str = "onnx", precision: str = "fp32",
                 runtime: str = "onnxruntime") -> dict:
    """The export's description: what the sidecar holds (without the check figures) and the model file embeds."""
    c, h, w = clf.input_shape
    return {
        "format": format,
        "precision": precision,
        "runtime": runtime,
        "model": clf.meta["model"],
        "model_args": clf.meta.get("model_args", {}),
        "cnnlab_version": clf.meta.get("cnnlab_version"),
        "class_names": clf.class_names,
        **({"opset": int(opset)} if opset is not None else {}),
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", h, w, c], "layout": "NHWC",
                  "resize": clf.resize},  # squash | crop | pad, as the model was trained (docs/deploy.md "Input")
        "outputs": {"logits": ["batch", len(clf.class_names) if len(clf.class_names) > 2 or clf.multi_label else 1],
                    "probabilities": ["batch", len(clf.class_names)]},
        **({"task": "multi_label", "thresholds": [float(t) for t in clf.thresholds]} if clf.multi_label else {}),
        "preprocessing_in_graph": True,
        "normalization": clf.meta["normalization"],
        "preprocessing": "x = (float(images) * scale - mean) / std per channel, then NHWC -> NCHW; all inside the graph",
    }


def set_export_info(model_bytes: bytes, info: dict) -> bytes:
    """The ONNX model with the export's description in its metadata_props (replacing an earlier one)."""
    import onnx

    proto = onnx.load_from_string(model_bytes)
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key != INFO_KEY]
    del proto.metadata_props[:]
    for key, value in [*keep, (INFO_KEY, json.dumps(info))]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


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
