"""`cnnlab predict` without PyTorch: run the ONNX model `cnnlab export` wrote beside a run with onnxruntime.

Importing torch costs ~1-2 s of a predict command's start-up; an exported model (preprocessing inside the graph,
class names and input conventions in its JSON sidecar) needs only numpy, Pillow and onnxruntime. `cnnlab predict
RUN images...` uses it when RUN/model.onnx is there and not older than the model file (`--backend torch` opts out,
`--backend onnxruntime` insists). The images are decoded and fitted exactly as for the PyTorch model
(data/images.load_image); the answers agree with it to the export's checked tolerance. A multi-label export's
sidecar carries the per-class thresholds, so the answer lists the same labels as the PyTorch model's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cnnlab.data import images, prediction
from cnnlab.errors import ConfigError, ModelError, first_line

BACKENDS = ("auto", "torch", "onnxruntime")


def exported_beside(run_or_model: str | Path) -> Path | None:
    """The fp32 ONNX export of a run folder or model file, when it exists and is not older than the model file."""
    source = Path(run_or_model)
    if source.suffix == ".onnx":
        return source if source.is_file() else None
    onnx, model = (source / "model.onnx", source / "model.safetensors") if source.is_dir() else (source.with_suffix(".onnx"), source)
    if not onnx.is_file() or not onnx.with_name(onnx.name + ".json").is_file():
        return None
    if model.is_file() and model.stat().st_mtime > onnx.stat().st_mtime:
        return None  # retrained since the export: the export is stale
    return onnx


class OnnxClassifier:
    """What `cnnlab predict` needs of a classifier (class names, input shape, load_image, predict_proba,
    predict_files), backed by an exported ONNX model."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        sidecar = self.path.with_name(self.path.name + ".json")
        try:
            info = json.loads(sidecar.read_text(encoding="utf-8"))
            self.class_names = list(info["class_names"])
            _, h, w, c = info["input"]["shape"]
            self.input_shape = (int(c), int(h), int(w))
            self.resize = info["input"].get("resize") or "squash"
            self.input_name = info["input"].get("name", "images")
            # multi-label: a label is predicted at or above its threshold (as Classifier.describe)
            self.thresholds = np.asarray(info["thresholds"], dtype=np.float64) if info.get("task") == "multi_label" else None
            if self.thresholds is not None and len(self.thresholds) != len(self.class_names):
                raise ValueError("thresholds")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelError(f"{sidecar}: unreadable export description ({e.__class__.__name__}) — export the model again:"
                             f" cnnlab export RUN --format onnx") from None
        try:
            import onnxruntime as ort
        except ModuleNotFoundError:
            raise ConfigError("--backend onnxruntime needs onnxruntime — pip install 'cnnlab[export]' (or use --backend torch)") from None
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own exception types: a damaged or foreign file
            raise ModelError(f"{self.path}: onnxruntime cannot load it ({first_line(e, 120)}) — export it again") from None

    def load_image(self, path: str | Path) -> np.ndarray:
        c, h, w = self.input_shape
        return images.load_image(path, (h, w), channels=c, resize=self.resize)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (N, K) of uint8 images (N, H, W, C)."""
        return self.session.run(["probabilities"], {self.input_name: np.ascontiguousarray(x, dtype=np.uint8)})[0]

    def predict_files(self, paths: list[str | Path], top_k: int = 5) -> list[dict]:
        return prediction.predict_files(paths, self.load_image, self.predict_proba, self.class_names, top_k, self.thresholds)


def predictor_for(run_or_model: str | Path, backend: str, tta: bool) -> OnnxClassifier | None:
    """The torch-free predictor `cnnlab predict` should use, or None for the PyTorch one."""
    if backend == "torch":
        return None
    onnx = exported_beside(run_or_model)
    if backend == "onnxruntime":
        if tta:
            raise ConfigError("--tta runs the PyTorch model (mirror images, test scales) — drop --tta or use --backend torch")
        if onnx is None:
            raise ConfigError(f"{run_or_model}: no up-to-date ONNX export beside it — run `cnnlab export {run_or_model} --format onnx`"
                              " first, or use --backend torch")
        return OnnxClassifier(onnx)
    if onnx is None or tta:
        return None
    try:
        import onnxruntime  # noqa: F401
    except ModuleNotFoundError:
        return None  # auto: without onnxruntime, PyTorch answers
    return OnnxClassifier(onnx)
