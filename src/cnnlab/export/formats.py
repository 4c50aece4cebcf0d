"""One entry point for every export format: build, check against PyTorch, then write atomically.

    export_model(clf_or_path, format="onnx-int8", data=ds)   # ds: a Dataset the model fits
    -> {"path", "sidecar", "format", "precision", "agreement", ...}

| format      | file (next to the run's model)      | runtime      | checked by                                  |
|-------------|-------------------------------------|--------------|---------------------------------------------|
| onnx        | model.onnx                          | onnxruntime  | max abs diff vs PyTorch <= 1e-4             |
| onnx-fp16   | model.fp16.onnx                     | onnxruntime  | top-1 agreement on held-out images >= floor |
| onnx-int8   | model.int8.onnx (static, calibrated)| onnxruntime  | top-1 agreement on held-out images >= floor |
| torchscript | model.torchscript                   | torch.jit    | max abs diff vs PyTorch <= 1e-4             |
| openvino    | model_openvino/ (model.xml + .bin)  | openvino     | max abs diff vs PyTorch <= 1e-4             |

Every export is built in memory (or a temp folder), loaded by the runner that will serve it
(export/runtime.py), checked, and only then written: temp files renamed into place, the model and its
`<file>.json` sidecar (format, precision, the check's figures) together. A failed check writes nothing.
This module never loads data itself: the caller passes a Dataset the model fits (the CLI loads the run's
own data) or image arrays.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.data.dataset import Dataset
from cnnlab.engine.io import WriteError, atomic_path
from cnnlab.engine.predictor import Classifier
from cnnlab.errors import ConfigError, DataError
from cnnlab.export import checks
from cnnlab.export.checks import DEFAULT_CALIBRATION, DEFAULT_HOLDOUT, FP32_MAX_ABS_DIFF, MIN_AGREEMENT, ExportImages
from cnnlab.export.errors import ExportError
from cnnlab.export.onnx import DEFAULT_OPSET, build_onnx_bytes, check_images, set_export_info, sidecar_info
from cnnlab.export.runtime import OPENVINO_XML, OnnxRunner, OpenVinoRunner, TorchScriptRunner, sidecar_path


@dataclass(frozen=True)
class Format:
    name: str
    precision: str  # fp32 | fp16 | int8
    runtime: str
    tail: str  # output name after the model file's stem ("model" in a run folder)
    suffix: str  # what --out must end in ("" = a folder)


FORMATS = {f.name: f for f in (
    Format("onnx", "fp32", "onnxruntime", ".onnx", ".onnx"),
    Format("onnx-fp16", "fp16", "onnxruntime", ".fp16.onnx", ".onnx"),
    Format("onnx-int8", "int8", "onnxruntime", ".int8.onnx", ".onnx"),
    Format("torchscript", "fp32", "torchscript", ".torchscript", ".torchscript"),
    Format("openvino", "fp32", "openvino", "_openvino", ""),
)}
OPENVINO_FILES = {OPENVINO_XML, "model.bin", OPENVINO_XML + ".json"}
MIN_INT8_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear


def default_output_path(source: Path, fmt: Format) -> Path:
    """<run>/model<tail> for a run folder, <stem><tail> next to a model file (model.int8.onnx, copy_openvino, …)."""
    return source / f"model{fmt.tail}" if source.is_dir() else source.with_name(source.stem + fmt.tail)


def export_model(
    model: Classifier | str | Path,
    out: str | Path | None = None,
    format: str = "onnx",
    *,
    data: Dataset | None = None,
    calibration: int = DEFAULT_CALIBRATION,
    holdout: int = DEFAULT_HOLDOUT,
    calibration_images: np.ndarray | None = None,
    holdout_images: np.ndarray | None = None,
    holdout_labels: np.ndarray | None = None,
    opset: int = DEFAULT_OPSET,
    check_images: np.ndarray | None = None,
    tolerance: float = FP32_MAX_ABS_DIFF,
    min_agreement: float | None = None,
    seed: int = 0,
) -> dict:
    """Export `model` (a Classifier, run folder or model file) to `format`, check it, write it and its sidecar.

    fp16/int8 need held-out images and int8 `calibration` calibration images: from `data` (a Dataset the
    model fits: train split for calibration, test/val for held-out) or given as uint8 (N, H, W, C) arrays
    (`holdout_labels` adds accuracies to the report). `min_agreement` overrides the documented floor
    (checks.MIN_AGREEMENT; 0 reports the agreement without refusing).
    Returns the sidecar's figures with "path" (file, or folder for openvino), "sidecar" and "size_bytes".
    """
    fmt = get_format(format)
    onnx_based = fmt.name != "torchscript"
    if onnx_based and not 7 <= int(opset) <= 21:
        raise ConfigError(f"--opset {opset} is not supported — use an opset between 7 and 21 (default {DEFAULT_OPSET})")
    if fmt.precision == "int8" and int(opset) < MIN_INT8_OPSET:
        raise ConfigError(f"--opset {opset}: int8 export needs opset {MIN_INT8_OPSET} or newer (per-channel quantisation)")
    if fmt.precision == "int8" and int(calibration) < 1:
        raise ConfigError(f"--calibration {calibration}: int8 export needs at least 1 calibration image (default {DEFAULT_CALIBRATION})")
    if int(holdout) < 1:
        raise ConfigError(f"holdout {holdout}: the agreement check needs at least 1 held-out image (default {DEFAULT_HOLDOUT})")
    if min_agreement is not None and not 0 <= float(min_agreement) <= 1:
        raise ConfigError(f"min_agreement {min_agreement}: give a fraction between 0 and 1 (0: report the agreement, refuse nothing)")

    clf = model if isinstance(model, Classifier) else Classifier.load(model)
    label = str(clf.source) if clf.source is not None else clf.meta["model"]
    out_path = _output_path(clf, out, fmt)
    images = _images(clf, fmt, data, calibration, holdout, calibration_images, holdout_images, holdout_labels, seed)
    info = sidecar_info(clf, int(opset) if onnx_based else None, fmt.name, fmt.precision, fmt.runtime)
    if fmt.name == "torchscript":
        info["input"].pop("name")  # TorchScript inputs and outputs are positional: images -> (logits, probabilities)

    staging = None  # the OpenVINO export's temp folder, removed unless it becomes the output
    try:
        payload, runner, staging = _build(clf, fmt, info, images, int(opset), out_path, label)
        check = _check(clf, fmt, runner, images, check_images, tolerance, min_agreement, label)
        side = {**info, "check": check}
        if fmt.name == "openvino":
            _write_folder(staging, out_path, side)
            staging = None
            model_file, size = out_path / OPENVINO_XML, sum(f.stat().st_size for f in out_path.iterdir() if f.name != OPENVINO_XML + ".json")
        else:
            with atomic_path(out_path) as tmp_model, atomic_path(sidecar_path(out_path)) as tmp_side:
                Path(tmp_model).write_bytes(payload)
                Path(tmp_side).write_text(json.dumps(side, indent=2) + "\n")
            model_file, size = out_path, len(payload)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return {"path": str(out_path), "sidecar": str(sidecar_path(model_file)), "format": fmt.name, "precision": fmt.precision,
            "runtime": fmt.runtime, "size_bytes": int(size), "model": clf.meta["model"], "class_names": clf.class_names,
            **({"opset": int(opset)} if onnx_based else {}), **check}


def get_format(name: str) -> Format:
    """The Format called `name`; ConfigError listing the formats when there is none."""
    if name not in FORMATS:
        raise ConfigError(f"--format {name!r}: unknown export format — choose one of: {', '.join(FORMATS)}")
    return FORMATS[name]


def _output_path(clf: Classifier, out: str | Path | None, fmt: Format) -> Path:
    if out is None:
        if clf.source is None:
            raise ConfigError("this model was not loaded from a file: give out= (where to write the export)")
        return default_output_path(Path(clf.source), fmt)
    p = Path(out)
    if not p.parent.is_dir():
        raise ConfigError(f"--out {p}: folder {p.parent} does not exist — create it first")
    if fmt.suffix and p.suffix.lower() != fmt.suffix:
        raise ConfigError(f"--out {p}: a {fmt.name} export's file name must end in {fmt.suffix}")
    if not fmt.suffix:
        if p.suffix.lower() in (".xml", ".bin", ".onnx", ".json"):
            raise ConfigError(f"--out {p}: an OpenVINO export is a folder (model.xml + model.bin inside) — give a folder name, e.g. {p.with_suffix('')}_openvino")
        if p.exists() and not (p.is_dir() and set(os.listdir(p)) <= OPENVINO_FILES):
            raise ConfigError(f"--out {p}: exists and is not an OpenVINO export folder ({', '.join(sorted(OPENVINO_FILES))} only) — choose a new folder name")
    return p


def _images(clf, fmt, data, calibration, holdout, calibration_images, holdout_images, holdout_labels, seed) -> ExportImages:
    """The calibration and held-out images the format needs (none for fp32), from arrays or `data`."""
    if fmt.precision == "fp32":
        return ExportImages()
    need_cal = fmt.precision == "int8"
    if data is not None:
        _check_fits(clf, data)
        got = checks.images_from_dataset(data, int(calibration) if need_cal and calibration_images is None else 0, int(holdout), seed)
    else:
        got = ExportImages()
    if calibration_images is not None:
        got.calibration, got.calibration_from = _checked_array(clf, calibration_images, "calibration_images"), "given"
    if holdout_images is not None:
        got.holdout, got.holdout_from = _checked_array(clf, holdout_images, "holdout_images"), "given"
        got.holdout_labels = None if holdout_labels is None else np.asarray(holdout_labels)
    if (need_cal and got.calibration is None) or got.holdout is None:
        what = "calibration and held-out images" if need_cal else "held-out images"
        raise ConfigError(f"--format {fmt.name} needs {what} to check the export: pass data= (a Dataset the model fits), "
                          f"or {'calibration_images= and ' if need_cal else ''}holdout_images= (uint8 N, H, W, C)")
    if need_cal:
        if len(got.calibration) < int(calibration):
            raise ConfigError(f"--calibration {calibration}: only {len(got.calibration)} calibration images were given — "
                              f"use --calibration {len(got.calibration)} or fewer")
        got.calibration = got.calibration[: int(calibration)]
    return got


def _check_fits(clf: Classifier, ds: Dataset) -> None:
    c, h, w = clf.input_shape
    if tuple(ds.image_shape) != (h, w, c):
        raise DataError(f"{ds.spec}: images are {'x'.join(map(str, ds.image_shape))} but the model expects {h}x{w}x{c}")
    if list(ds.class_names) != clf.class_names:
        raise DataError(f"{ds.spec}: classes {ds.class_names} differ from the model's {clf.class_names}")


def _checked_array(clf: Classifier, x: np.ndarray, name: str) -> np.ndarray:
    c, h, w = clf.input_shape
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (h, w, c) or len(x) == 0:
        raise ConfigError(f"{name}: expected uint8 images of shape (N, {h}, {w}, {c}), got {x.dtype} {x.shape}")
    return np.ascontiguousarray(x)


def _build(clf: Classifier, fmt: Format, info: dict, images: ExportImages, opset: int, out_path: Path, label: str):
    """(bytes to write or None, the runner that checks them, the OpenVINO staging folder or None)."""
    if fmt.name == "torchscript":
        from cnnlab.export.torchscript import build_torchscript_bytes

        payload = build_torchscript_bytes(clf, info, label)
        return payload, TorchScriptRunner(payload), None
    fp32 = build_onnx_bytes(clf, opset, label)
    if fmt.name == "openvino":
        from cnnlab.export.openvino import write_openvino_ir
        from cnnlab.export.runtime import require_openvino

        require_openvino()  # before making a folder
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent))
        except OSError as e:
            raise WriteError(f"{out_path}: could not be written ({e.strerror or e}) — check that the folder is writable") from None
        try:
            xml = write_openvino_ir(fp32, staging, info, label)
            return None, OpenVinoRunner(xml), staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    if fmt.precision == "fp16":
        from cnnlab.export.quantize import to_fp16

        payload = to_fp16(fp32)
    elif fmt.precision == "int8":
        from cnnlab.export.quantize import to_int8

        payload = to_int8(fp32, images.calibration)
    else:
        payload = fp32
    payload = set_export_info(payload, info)
    return payload, OnnxRunner(payload), None


def _check(clf, fmt, runner, images: ExportImages, x_check, tolerance, min_agreement, label) -> dict:
    """The check's figures (sidecar "check"); raises when the export misses its bar."""
    x = check_images(clf) if x_check is None else _checked_array(clf, x_check, "check_images")
    what = {"onnx": "ONNX", "torchscript": "TorchScript", "openvino": "OpenVINO"}.get(fmt.name, fmt.name)
    if fmt.precision == "fp32":
        diff, sizes = checks.check_fp32(clf, runner, x, tolerance, label, what)
        return {"max_abs_diff": diff, "tolerance": tolerance, "checked_batch_sizes": sizes}
    # Reduced precision: the difference on the check images is reported, the agreement is the bar.
    diff, sizes = checks.check_fp32(clf, runner, x, float("inf"), label, what)
    floor = MIN_AGREEMENT[fmt.precision] if min_agreement is None else float(min_agreement)
    res = checks.check_agreement(clf, runner, images.holdout, images.holdout_labels, floor, label, f"the {fmt.name} export")
    res.update(max_abs_diff=diff, checked_batch_sizes=sizes, holdout_from=images.holdout_from)
    if fmt.precision == "int8":
        res.update(calibration_images=int(len(images.calibration)), calibration_from=images.calibration_from)
    return res


def _write_folder(staging: Path, dest: Path, side: dict) -> None:
    """Sidecar into the staged OpenVINO folder, everything fsynced, then the folder swapped into place."""
    try:
        (staging / (OPENVINO_XML + ".json")).write_text(json.dumps(side, indent=2) + "\n")
        for f in staging.iterdir():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(f, 0o644)
        os.chmod(staging, 0o755)
        if dest.exists():  # checked in _output_path: an earlier OpenVINO export, moved aside then removed
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, old / dest.name)
            try:
                os.replace(staging, dest)
            except OSError:
                os.replace(old / dest.name, dest)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, dest)
    except OSError as e:
        raise WriteError(f"{dest}: could not be written ({e.strerror or e}) — check that the folder is writable; "
                         f"the previous {dest.name}, if any, is unchanged") from None
