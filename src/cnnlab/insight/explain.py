"""Explain predictions: Grad-CAM / Grad-CAM++ overlays, feature maps and first-layer filters, saved as PNGs.

`explain(run, images)` is the API behind `cnnlab explain`; it returns one record per saved figure. A multi-label
model gets one Grad-CAM figure per predicted label (`<image>_<label>_gradcam.png`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from cnnlab.errors import ConfigError


def _channel_note(path: Path, channels: int) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:  # header only: the safe decoder (clf.load_image) does the real read
            mode = im.mode
    except Exception:
        return None
    is_grey = mode in ("1", "L", "I", "I;16", "F", "LA")
    if channels == 3 and is_grey:
        return f"{path}: greyscale image converted to RGB for this 3-channel model"
    if channels == 1 and not is_grey:
        return f"{path}: {mode} image converted to greyscale for this 1-channel model"
    return None


def _save_explanation(img, results: list[tuple[str, dict]], title: str, path: Path) -> Path:
    from cnnlab.plotting import plt, save_figure, show_image

    fig, axes = plt.subplots(1, 1 + len(results), figsize=(3.2 * (1 + len(results)), 3.6), squeeze=False)
    show_image(axes[0, 0], img)
    axes[0, 0].set_title("input", fontsize=10)
    for ax, (method, res) in zip(axes[0, 1:], results):
        show_image(ax, res["overlay"])
        ax.set_title(f"{'Grad-CAM++' if method == 'gradcam++' else 'Grad-CAM'} · {res['layer']}", fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def _file_part(name: str) -> str:
    """A class name as part of a file name (letters, digits, - and _ kept)."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name) or "class"


def explain(run, paths, *, method: str = "both", layer: str | None = None, class_name: str | None = None,
            feature_maps: bool = False, filters: bool = False, out: str | Path = "explain",
            note: Callable[[str], None] | None = None) -> list[dict]:
    """Save explanation figures for image files/folders under `out`; returns their records (paths, class, layer)."""
    import torch

    from cnnlab.engine.inference import to_input
    from cnnlab.engine.predictor import expand_image_paths, load_classifier
    from cnnlab.insight import features
    from cnnlab.insight.gradcam import explain_image, fit_channels, labels_to_explain

    clf = load_classifier(run)
    paths = expand_image_paths(paths if isinstance(paths, (list, tuple)) else [paths])
    out = Path(out)
    c, h, w = clf.input_shape
    if class_name is not None and class_name not in clf.class_names:
        raise ConfigError(f"unknown class {class_name!r} — this model's classes: {', '.join(clf.class_names)}")
    methods = ("gradcam", "gradcam++") if method == "both" else (method,)
    records = []
    if filters:
        name, weights = features.first_layer_filters(clf.model, (c, h, w))
        records.append({"filters": str(features.save_filters(weights, name, out / "filters.png")), "layer": name})
    for i, p in enumerate(paths):
        msg = _channel_note(p, c)
        if msg and note:
            note(msg)
        img = clf.load_image(p)
        stem = f"{i:03d}_{p.stem}" if len(paths) > 1 else p.stem
        if clf.multi_label and class_name is None:  # each predicted label explained on its own
            labels, above = labels_to_explain(clf, img)
            if not above and note:
                note(f"{p}: no label at or above its threshold — explaining the most probable, {labels[0]}")
            targets = [(lb, f"{stem}_{_file_part(lb)}_gradcam.png") for lb in labels]
        else:
            targets = [(class_name, f"{stem}_gradcam.png")]
        for n, (target, name) in enumerate(targets):
            results = [(m, explain_image(clf, img, target, layer, m)) for m in methods]
            first = results[0][1]
            fig_path = _save_explanation(img, results, f"{p.name}: {first['class']} ({first['probability']:.1%})", out / name)
            rec = {"path": str(p), "class": first["class"], "probability": first["probability"], "layer": first["layer"], "gradcam": str(fig_path)}
            if feature_maps and n == 0:
                x = to_input(torch.from_numpy(fit_channels(img, c)[0][None].copy()), clf.meta["normalization"], clf.device)
                fm_layer, maps = features.feature_maps(clf.model, x, layer)
                rec["feature_maps"] = str(features.save_feature_maps(maps, fm_layer, out / f"{stem}_features_{fm_layer}.png"))
            records.append(rec)
    return records
