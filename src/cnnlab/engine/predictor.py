"""A trained classifier loaded from a model file: the one object predict, evaluate and serve use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cnnlab.data import images
from cnnlab.data.sources import walk_files
from cnnlab.engine.device import resolve_device
from cnnlab.engine.inference import predict_logits, probabilities
from cnnlab.engine.model_file import load_model_file
from cnnlab.errors import DataError


class Classifier:
    def __init__(self, model: torch.nn.Module, meta: dict, device: torch.device, source: Path | None = None):
        self.model, self.meta, self.device, self.source = model, meta, device, source

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "Classifier":
        dev = resolve_device(device)
        model, meta = load_model_file(path, dev)
        return cls(model, meta, dev, Path(path))

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) the model was trained on."""
        c, h, w = self.meta["input_shape"]
        return c, h, w

    def predict_proba(self, x: np.ndarray, batch_size: int | None = None, tta: bool = False) -> np.ndarray:
        """Class probabilities (N, K) for uint8 images (N, H, W, C) of the model's input shape (tta: averaged over mirror images and inference.tta_scales)."""
        logits = predict_logits(self.model, x, self.meta["normalization"], self.device, "fp32", batch_size, tta=tta)
        return probabilities(logits).numpy()

    def load_image(self, path: str | Path) -> np.ndarray:
        c, h, w = self.input_shape
        return images.load_image(path, (h, w), channels=c)

    def describe(self, probs: np.ndarray, top_k: int = 5) -> dict:
        order = np.argsort(-probs, kind="stable")[: max(1, min(top_k, len(probs)))]
        names = self.class_names
        return {
            "class": names[order[0]],
            "probability": float(probs[order[0]]),
            "top_k": [{"class": names[i], "probability": float(probs[i])} for i in order],
        }

    def predict_files(self, paths: list[str | Path], top_k: int = 5, tta: bool = False) -> list[dict]:
        """One result per path: the prediction, or {"path", "error"} for a file that cannot be read."""
        results: list[dict | None] = [None] * len(paths)
        ok_idx, arrays = [], []
        for i, p in enumerate(paths):
            try:
                arrays.append(self.load_image(p))
                ok_idx.append(i)
            except DataError as e:
                results[i] = {"path": str(p), "error": str(e)}
        if arrays:
            probs = self.predict_proba(np.stack(arrays), tta=tta)
            for i, pr in zip(ok_idx, probs):
                results[i] = {"path": str(paths[i]), **self.describe(pr, top_k)}
        return results  # type: ignore[return-value]


def expand_image_paths(inputs: list[str | Path]) -> list[Path]:
    """Files as given; folders expanded to their image files (recursive, sorted, hidden folders skipped)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = [f for f in walk_files(p) if f.is_file() and images.is_image_file(f)]
            if not found:
                raise DataError(f"{p}: folder holds no images (jpg, png, webp, heic, avif, …: other files are left out)")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return out
