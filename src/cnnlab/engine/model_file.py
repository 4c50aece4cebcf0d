"""Model files: safetensors weights + JSON metadata. No pickle anywhere.

The metadata holds everything needed to rebuild and use the model: registry name and arguments,
class names, input shape (C, H, W), normalisation and resize policy (`resize`: how a photo of another aspect
ratio became the input size in training — squash, crop or pad, cnnlab.data.images.fit_image — so predict, serve,
evaluate and the exported model's description do the same; files written before it was recorded mean squash).
A multi-label model adds `task: "multi_label"` (one sigmoid output per class) and `thresholds` (one decision threshold
per class, engine/multilabel.py); a file without `task` is single-label.
Loading checks it before building anything, so a foreign or damaged file gives a clear error instead of a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from cnnlab._version import __version__
from cnnlab.config import RESIZES
from cnnlab.engine import multilabel
from cnnlab.engine.run_dir import RunFolder
from cnnlab.errors import CnnlabError, ModelError
from cnnlab.io import as_os_error, atomic_path

FORMAT = "cnnlab-model"
FORMAT_VERSION = 1
REQUIRED = ("model", "model_args", "class_names", "input_shape", "normalization")


def model_metadata(model: nn.Module, class_names: list[str], input_shape: tuple[int, int, int], resize: str | None = None,
                   **extra: Any) -> dict:
    """input_shape is (C, H, W). The normalisation is the model's own when it has one (pretrained weights expect the
    statistics they were trained with: models/pretrained.py), else 0-1 scaling; `pretrained` says where its
    starting weights came from. `resize` (squash | crop | pad) is how the training images were fitted; None: the
    training config's (`config` is added when training ends), written into the file by save_model_file."""
    pretrained = getattr(model, "cnnlab_pretrained", None)
    norm = getattr(model, "cnnlab_normalization", None) or default_normalization(input_shape[0])
    if getattr(model, "cnnlab_task", None) == multilabel.TASK:  # thresholds: 0.5 until training tunes them
        extra = {"task": multilabel.TASK, "thresholds": [multilabel.DEFAULT_THRESHOLD] * len(class_names), **extra}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "cnnlab_version": __version__,
        "model": model.cnnlab_name,
        "model_args": dict(model.cnnlab_args),
        "class_names": list(class_names),
        "input_shape": list(input_shape),
        "normalization": dict(norm),
        **({"resize": resize} if resize is not None else {}),
        **({"pretrained": {k: v for k, v in pretrained.items() if k != "file"}} if pretrained else {}),
        **extra,
    }


def default_normalization(channels: int) -> dict:
    """Pixels scaled to 0-1, no mean/std shift: what models trained from scratch here see."""
    return {"scale": 1 / 255, "mean": [0.0] * channels, "std": [1.0] * channels}


def resize_mode(meta: dict) -> str:
    """How images are fitted to this model's input size: the metadata's `resize`, else its training config's, else
    squash (model files from before --resize, which squashed every image)."""
    mode = _recorded_resize(meta) or "squash"
    if mode not in RESIZES:
        raise ModelError(f"model metadata: resize {mode!r} is not one of {', '.join(RESIZES)} — the file is damaged or from an incompatible tool")
    return mode


def _recorded_resize(meta: dict) -> Any:
    config = meta.get("config")
    return meta.get("resize") or (config.get("resize") if isinstance(config, dict) else None)


def save_model_file(path: str | Path, model: nn.Module, meta: dict) -> None:
    meta = {**meta, "resize": resize_mode(meta)}  # always written out, so readers need not look into the config
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata={"cnnlab": json.dumps(meta)})
        except SafetensorError as e:  # e.g. "I/O error: No space left on device"
            raise as_os_error(tmp, e) from None


def resolve_model_path(path: str | Path) -> Path:
    """Accept a run folder (uses its model.safetensors) or a model file."""
    p = Path(path)
    if p.is_dir():
        run = RunFolder(p)
        if run.model_file.is_file():
            return run.model_file
        hint = " (training did not finish; resume it with `cnnlab train --resume " + str(p) + "`)" if run.last_ckpt.exists() else ""
        raise ModelError(f"{p}: no {run.model_file.name} in this run folder{hint}")
    if not p.is_file():
        raise ModelError(f"{p}: no such model file or run folder")
    return p


def read_metadata(path: str | Path) -> dict:
    p = resolve_model_path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get("cnnlab")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"{p}: not a readable safetensors model file ({_reason(e)}) — re-export or retrain it") from None
    if raw is None:
        raise ModelError(f"{p}: safetensors file without cnnlab metadata — it was not written by cnnlab")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise ModelError(f"{p}: cnnlab metadata is not valid JSON — the file is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{p}: metadata is not a cnnlab model description")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ModelError(f"{p}: metadata lacks {', '.join(missing)} — the file is damaged or from an incompatible tool")
    bad = _metadata_problem(meta)
    if bad:
        raise ModelError(f"{p}: metadata {bad} — the file is damaged or from an incompatible tool")
    return meta


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _metadata_problem(meta: dict) -> str | None:
    """What is wrong with the types of the required fields (None: nothing). Checked before anything is built."""
    if not isinstance(meta["model"], str):
        return "model is not a registry name"
    if not isinstance(meta["model_args"], dict):
        return "model_args is not a mapping of argument names to values"
    names = meta["class_names"]
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(c, str) for c in names):
        return "class_names is not a list of at least 2 class names"
    shape = meta["input_shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)):
        return f"input_shape {shape!r} is not [C, H, W] with positive whole numbers"
    norm = meta["normalization"]
    ok = isinstance(norm, dict) and _is_number(norm.get("scale"))
    ok = ok and all(isinstance(norm.get(k), list) and len(norm[k]) == shape[0] and all(_is_number(v) for v in norm[k]) for k in ("mean", "std"))
    if not ok or any(v == 0 for v in norm["std"]):
        return f"normalization is not {{scale, mean[{shape[0]}], std[{shape[0]}] (non-zero)}}"
    resize = _recorded_resize(meta)
    if resize is not None and resize not in RESIZES:
        return f"resize {resize!r} is not one of {', '.join(RESIZES)}"
    return multilabel.metadata_problem(meta)


def load_model_file(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the architecture from metadata and load weights (strict)."""
    from cnnlab.models import create_model

    p = resolve_model_path(path)
    meta = read_metadata(p)
    c, h, w = meta["input_shape"]
    try:
        model = create_model(meta["model"], len(meta["class_names"]), c, (h, w), **meta["model_args"])
        if multilabel.is_multi_label(meta):
            from cnnlab.models.layers import one_output_per_class

            one_output_per_class(model, len(meta["class_names"]))
    except CnnlabError as e:  # unknown model or arguments: say which file described it
        raise ModelError(f"{p}: {e}") from None
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (RuntimeError, SafetensorError, OSError) as e:
        raise ModelError(f"{p}: its weights cannot be read ({_reason(e)}) — the file is damaged; copy it again or retrain") from None
    problem = weights_problem(model, state, len(meta["class_names"]))
    if problem:
        raise ModelError(f"{p}: weights do not match architecture {meta['model']!r}: {problem}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # (weights_problem found none; a dtype torch cannot copy, say)
        raise ModelError(f"{p}: weights do not match architecture {meta['model']!r} ({_reason(e)}) — re-export or retrain it") from None
    model.cnnlab_normalization = dict(meta["normalization"])  # kept if the model is trained on or saved again
    if isinstance(meta.get("pretrained"), dict):
        model.cnnlab_pretrained = dict(meta["pretrained"])
    return model.to(device).eval(), meta


def _reason(e: BaseException, limit: int = 160) -> str:
    """A library's error as a short, whole phrase: its first line (safetensors: "Error while deserializing header:
    HeaderTooLarge"; torch's run to paragraphs), cut at a word, never mid-word."""
    text = (str(e).strip().splitlines() or [e.__class__.__name__])[0].strip() or e.__class__.__name__
    if isinstance(e, OSError) and e.strerror:
        text = e.strerror
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "a scalar"


def weights_problem(model: nn.Module, found: dict[str, torch.Tensor], n_classes: int) -> str | None:
    """How the tensors in a file differ from what `model` needs, in words (None: they fit). A file whose output layer
    alone differs is a class count the metadata and the weights disagree on — said as such."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    reshaped = [k for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k].shape)]
    if not (missing or extra or reshaped):
        return None
    head = getattr(model, "head_name", None) or (next(reversed(expected)).rpartition(".")[0] if expected else "")
    head_keys = [k for k in expected if k.startswith(head + ".")] if head else []
    head_weight = next((k for k in head_keys if k.endswith("weight")), None)
    if not (missing or extra) and head_weight in reshaped and set(reshaped) <= set(head_keys):
        needs = expected[head_weight].shape[0]
        return (f"its output layer ({head}) has {found[head_weight].shape[0]} outputs, but class_names in the metadata lists {n_classes}"
                f" classes{f' (which take {needs})' if needs != n_classes else ''} — the class names were edited or belong to other"
                " weights; restore the original file or retrain the model")
    return tensor_differences(expected, found) + " — the metadata describes another model than these weights; re-export or retrain it"


def tensor_differences(expected: dict[str, torch.Tensor], found: dict[str, Any]) -> str | None:
    """How the tensors `found` (a file's) differ from a model's `expected` state dict, in words (None: they fit)."""
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    reshaped = [k for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) the architecture needs are missing (first: {missing[0]})")
    if extra:
        parts.append(f"{len(extra)} tensor(s) in the file are not part of it (first: {extra[0]})")
    if reshaped:
        k = reshaped[0]
        parts.append(f"{len(reshaped)} tensor(s) have other shapes (first: {k} is {_shape(found[k])} in the file, {_shape(expected[k])} in the architecture)")
    return "; ".join(parts) or None

