"""TorchScript export: the same preprocessing-wrapped model as the ONNX export, traced into TorchScript's
zip archive (code + tensors; loaded with `torch.jit.load`, no Python class needed and never unpickled
by `torch.load`).

Tracing, not scripting: every registry model traces (scripting rejects several of them), and the
trace is checked at two batch sizes against PyTorch before it is written, so a batch size frozen into
the trace would be caught. The export's description rides along as an extra file in the archive.
"""

from __future__ import annotations

import io
import json
import warnings

import torch

from cnnlab.engine.predictor import Classifier
from cnnlab.errors import first_line
from cnnlab.export.errors import ExportError
from cnnlab.export.onnx import _Preprocessed
from cnnlab.export.runtime import TORCHSCRIPT_INFO_FILE


def build_torchscript_bytes(clf: Classifier, info: dict, label: str = "model") -> bytes:
    """The traced model (uint8 NHWC in -> logits, probabilities) as TorchScript archive bytes; not yet checked."""
    c, h, w = clf.input_shape
    wrapped = _Preprocessed(clf.model.float().eval(), clf.meta["normalization"], c).eval()
    example = torch.zeros(2, h, w, c, dtype=torch.uint8)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # trace deprecation and shape-to-bool notices; the result is checked instead
            traced = torch.jit.trace(wrapped, (example,), check_trace=False)
            torch.jit.save(traced, buf, _extra_files={TORCHSCRIPT_INFO_FILE: json.dumps(info)})
    except Exception as e:
        raise ExportError(f"{label}: model {clf.meta['model']!r} cannot be traced to TorchScript ({first_line(e)})") from None
    return buf.getvalue()
