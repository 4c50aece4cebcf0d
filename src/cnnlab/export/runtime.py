"""Run an exported model in its own runtime: ONNX (any precision) in onnxruntime, TorchScript, OpenVINO IR.

Every export takes uint8 images (N, H, W, C) at the model's input size and returns (logits, probabilities),
with the preprocessing inside the model. The same runners check an export before it is written
(export/formats.py) and serve it (serve/app.py), so what was checked is what runs. The export's
description (class names, input shape, format, precision: the sidecar without its check figures) is
stored inside the model file too, so a model file alone is enough; exports written before that fall
back to the `<file>.json` sidecar beside them.
"""

from __future__ import annotations

import io
import json
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cnnlab.engine.predictor import Classifier
from cnnlab.errors import ModelError
from cnnlab.export.errors import ExportError

INFO_KEY = "cnnlab_export"  # ONNX metadata_props key / OpenVINO rt_info key holding the export's description
TORCHSCRIPT_INFO_FILE = "cnnlab.json"  # the same description as an extra file in the TorchScript archive
OPENVINO_XML = "model.xml"  # inside an OpenVINO export folder, beside model.bin
OPENVINO_INSTALL = "pip install openvino"


def sidecar_path(model_file: Path) -> Path:
    """`<file>.json` beside any exported model file (model.onnx.json, model.torchscript.json, model.xml.json)."""
    return model_file.with_name(model_file.name + ".json")


def require_openvino():
    """The openvino module, or an ExportError that says which `pip install` fixes it."""
    try:
        import openvino
    except ImportError:
        raise ExportError(f"OpenVINO is not installed — `{OPENVINO_INSTALL}` (into the Python environment cnnlab runs in) fixes it") from None
    return openvino


# ------------------------------------------------------------------ runners: uint8 NHWC -> (logits, probabilities)


class OnnxRunner:
    """An onnxruntime session on the CPU. `spinning=False` stops idle intra-op threads from spin-waiting
    (a server wants those cores for decoding and its event loop)."""

    name = "onnxruntime"

    def __init__(self, model: bytes | Path, threads: int = 0, spinning: bool = True):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = int(threads)
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # not an ONNX file, or an operator this onnxruntime lacks
            raise ModelError(f"{model if isinstance(model, Path) else 'model'}: onnxruntime cannot load it ({_first_line(e)})") from None
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, probs = self.session.run(["logits", "probabilities"], {self.input_name: x})
        return logits, probs

    def info(self) -> dict | None:
        raw = self.session.get_modelmeta().custom_metadata_map.get(INFO_KEY)
        return json.loads(raw) if raw else None


class TorchScriptRunner:
    """A TorchScript archive (zip; loaded by torch.jit.load, never by pickle)."""

    name = "torchscript"

    def __init__(self, model: bytes | Path):
        import torch

        extra = {TORCHSCRIPT_INFO_FILE: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript; it still loads
                self.module = torch.jit.load(io.BytesIO(model) if isinstance(model, bytes) else str(model), map_location="cpu", _extra_files=extra)
        except Exception as e:
            raise ModelError(f"{model if isinstance(model, Path) else 'model'}: not a TorchScript archive ({_first_line(e)})") from None
        self.module.eval()
        self._info = json.loads(extra[TORCHSCRIPT_INFO_FILE]) if extra[TORCHSCRIPT_INFO_FILE] else None

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            logits, probs = self.module(torch.from_numpy(np.ascontiguousarray(x)))
        return logits.numpy(), probs.numpy()

    def info(self) -> dict | None:
        return self._info


class OpenVinoRunner:
    """An OpenVINO IR (model.xml + model.bin) compiled for the CPU in fp32.

    OpenVINO's CPU plugin runs in bf16 by default on CPUs that have it (this machine's AVX-512-bf16
    does): an fp32 export is compiled with INFERENCE_PRECISION_HINT=f32 so it computes what was checked.
    """

    name = "openvino"

    def __init__(self, xml: Path, threads: int = 0):
        ov = require_openvino()
        core = ov.Core()
        try:
            self.model = core.read_model(str(xml))
        except Exception as e:
            raise ModelError(f"{xml}: OpenVINO cannot read it ({_first_line(e)})") from None
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(self.model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.outputs = {o.get_any_name(): o for o in self.compiled.outputs}
        self._lock = threading.Lock()  # one infer request: one call at a time

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            res = self.request.infer({0: np.ascontiguousarray(x)})
            # Copies: the request reuses its output buffers on the next call.
            return np.array(res[self.outputs["logits"]]), np.array(res[self.outputs["probabilities"]])

    def info(self) -> dict | None:
        if not self.model.has_rt_info([INFO_KEY]):
            return None
        return json.loads(self.model.get_rt_info([INFO_KEY]).astype(str))


# ------------------------------------------------------------------ loading an exported model


@dataclass
class ExportedModel:
    """An exported model file with its description: what `cnnlab serve` and library users run.

    Offers the part of Classifier's interface that serving needs (class_names, input_shape, meta,
    predict_proba, describe), so a server runs an int8 ONNX or an OpenVINO model like a run folder.
    """

    runner: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    info: dict
    source: Path

    describe = Classifier.describe  # top-1 and top-k from probabilities: needs only class_names

    @property
    def class_names(self) -> list[str]:
        return list(self.info["class_names"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W), like Classifier.input_shape."""
        _, h, w, c = self.info["input"]["shape"]
        return int(c), int(h), int(w)

    @property
    def resize(self) -> str:
        """How images are fitted to the input size (squash | crop | pad), as the model was trained (older exports: squash)."""
        return (self.info.get("input") or {}).get("resize") or "squash"

    @property
    def format(self) -> str:
        return self.info.get("format", "onnx") if self.info.get("format") != "cnnlab-onnx" else "onnx"

    @property
    def precision(self) -> str:
        return self.info.get("precision", "fp32")

    @property
    def runtime(self) -> str:
        return getattr(self.runner, "name", type(self.runner).__name__)

    @property
    def meta(self) -> dict:
        """The model-file metadata keys that serving reads (name, classes, shape, normalisation, version)."""
        c, h, w = self.input_shape
        return {"model": self.info["model"], "model_args": self.info.get("model_args", {}), "class_names": self.class_names,
                "input_shape": [c, h, w], "normalization": self.info.get("normalization"),
                "cnnlab_version": self.info.get("cnnlab_version"), "format": self.format, "precision": self.precision,
                **{k: self.info[k] for k in ("task", "thresholds") if k in self.info}}  # multi-label: Classifier.describe reads them

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.runner(np.ascontiguousarray(x, dtype=np.uint8))

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (N, K) for uint8 images (N, H, W, C) of the model's input shape."""
        return self.run(x)[1]


def exported_model_file(path: str | Path) -> Path | None:
    """The model file when `path` is an export (.onnx, .torchscript, OpenVINO .xml or its folder), else None."""
    p = Path(path)
    if p.is_dir():
        return p / OPENVINO_XML if (p / OPENVINO_XML).is_file() and not (p / "model.safetensors").is_file() else None
    return p if p.suffix.lower() in (".onnx", ".torchscript", ".xml") else None


def make_runner(model_file: Path, threads: int = 0, spinning: bool = True):
    """The runner for an exported model file, chosen by its suffix."""
    suffix = model_file.suffix.lower()
    if suffix == ".onnx":
        return OnnxRunner(model_file, threads, spinning)
    if suffix == ".torchscript":
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        return TorchScriptRunner(model_file)
    if suffix == ".xml":
        return OpenVinoRunner(model_file, threads)
    raise ModelError(f"{model_file}: not an exported model (.onnx, .torchscript or an OpenVINO .xml / folder)")


def load_exported(path: str | Path, threads: int = 0, spinning: bool = True) -> ExportedModel:
    """Load an export written by `export_model` (or `cnnlab export`) and check that it answers.

    `path`: the .onnx / .torchscript file, an OpenVINO model.xml or the folder holding it. Local files only.
    """
    model_file = exported_model_file(path)
    if model_file is None:
        raise ModelError(f"{path}: not an exported model (.onnx, .torchscript, or an OpenVINO model.xml / its folder)")
    if not model_file.is_file():
        raise ModelError(f"{model_file}: no such file")
    runner = make_runner(model_file, threads, spinning)
    info = runner.info() or _read_sidecar(model_file)
    model = ExportedModel(runner, _checked_info(info, model_file), model_file)
    _smoke_test(model)
    return model


def _read_sidecar(model_file: Path) -> dict:
    side = sidecar_path(model_file)
    if not side.is_file():
        raise ModelError(f"{model_file}: holds no cnnlab export description and {side.name} is missing — export it again with `cnnlab export`")
    try:
        return json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{side}: not a readable JSON sidecar ({_first_line(e)}) — export the model again") from None


def _checked_info(info: dict, model_file: Path) -> dict:
    try:
        names, shape = info["class_names"], info["input"]["shape"]
        ok = (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)
              and isinstance(shape, list) and len(shape) == 4 and all(isinstance(v, int) and v > 0 for v in shape[1:])
              and shape[3] in (1, 3) and isinstance(info["model"], str))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise ModelError(f"{model_file}: its export description lacks class_names, input.shape [batch, H, W, C] or model — export it again")
    return info


def _smoke_test(model: ExportedModel) -> None:
    """One all-grey image through the model: probabilities of the right shape that sum to 1."""
    c, h, w = model.input_shape
    try:
        logits, probs = model.run(np.full((1, h, w, c), 128, dtype=np.uint8))
    except Exception as e:
        raise ModelError(f"{model.source}: the model does not run on a {h}x{w}x{c} image ({_first_line(e)})") from None
    k = len(model.class_names)
    multi = model.info.get("task") == "multi_label"  # one sigmoid per class: each in [0, 1], no sum
    sums_right = bool(np.all((probs >= 0) & (probs <= 1))) if multi else abs(float(probs.sum()) - 1) <= 1e-2
    if probs.shape != (1, k) or not np.all(np.isfinite(logits)) or not sums_right:
        raise ModelError(f"{model.source}: answers probabilities of shape {probs.shape} for {k} classes (or not summing to 1) — export it again")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
