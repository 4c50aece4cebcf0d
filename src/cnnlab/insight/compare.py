"""`cnnlab compare RUN...`: which architecture / learning rate / batch size was better, at a glance.

Reads each run folder (engine/run_dir.RunFolder: typed config, metrics history, run.json); returns the config
keys that differ, the final metrics, and writes overlaid curves (PNG) and a self-contained compare.html.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from cnnlab.engine.run_dir import CONFIG, METRICS, RunFolder
from cnnlab.errors import CnnlabError
from cnnlab.plotting import plt, save_figure

CURVES = (("train_loss", "train loss"), ("val_loss", "validation loss"), ("train_accuracy", "train accuracy"), ("val_accuracy", "validation accuracy"))
IGNORED_KEYS = {"device", "precision"}


def load_run(path: str | Path) -> dict:
    """config (as a dict of the typed config's fields), per-epoch history and run.json of one run folder; missing
    or unreadable files are named with the fix."""
    run = RunFolder.open(path, need=(CONFIG, METRICS))
    return {"name": run.path.name, "path": str(run.path), "config": run.config().to_dict(), "history": run.metrics(), "info": run.info()}


def _unique_names(runs: list[dict]) -> None:
    names = [r["name"] for r in runs]
    if len(set(names)) < len(names):  # runs/a/train and runs/b/train: use the parent too
        for r in runs:
            r["name"] = f"{Path(r['path']).parent.name}/{r['name']}"


def expand_runs(paths: list[str | Path]) -> list[str | Path]:
    """Run folders as given, a cross-validation folder (`cnnlab train --folds K`) replaced by its fold runs."""
    from cnnlab.engine.kfold import fold_runs, is_cross_validation

    out: list[str | Path] = []
    for p in paths:
        folds = fold_runs(p)
        if not folds and is_cross_validation(p):
            raise CnnlabError(f"{p}: a cross-validation folder without a finished epoch in any fold yet — compare it when its folds have trained")
        out.extend(folds or [p])
    return out


def compare_runs(paths: list[str | Path]) -> dict:
    """{"runs": [{name, path, status, config (differing keys), final metrics}], "differing_keys", "warnings"}.
    A cross-validation folder stands for its fold runs (one row each)."""
    if len(paths) < 1:
        raise CnnlabError("compare needs at least one run folder")
    runs = [load_run(p) for p in expand_runs(paths)]
    _unique_names(runs)
    keys = sorted({k for r in runs for k in r["config"]} - IGNORED_KEYS)
    differing = [k for k in keys if len({json.dumps(r["config"].get(k), sort_keys=True) for r in runs}) > 1]
    warnings = []
    datasets = {json.dumps([r["config"].get("data"), r["config"].get("classes")]) for r in runs}
    if len(datasets) > 1:
        warnings.append("runs use different datasets (" + ", ".join(f"{r['name']}: {r['config'].get('data')}" for r in runs)
                        + ") — their metrics are not directly comparable")
    rows = []
    for r in runs:
        last = r["history"][-1] if r["history"] else {}
        test = r["info"].get("test") or {}
        vals = [h.get("val_accuracy") for h in r["history"] if h.get("val_accuracy") is not None]
        rows.append({
            "name": r["name"], "path": r["path"], "status": r["info"].get("status", "unknown"),
            "model": r["config"].get("model"),
            "config": {k: r["config"].get(k) for k in differing},
            "epochs": len(r["history"]),
            "final": {k: last.get(k) for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")},
            "best_val_accuracy": max(vals) if vals else None,
            "test_accuracy": test.get("accuracy"), "test_loss": test.get("loss"),
            "train_seconds": (r["info"].get("seconds") or {}).get("train"),
        })
    return {"runs": rows, "differing_keys": differing, "warnings": warnings, "_histories": [r["history"] for r in runs]}


def save_overlaid_curves(result: dict, path: str | Path) -> Path:
    """Train/val loss and accuracy per epoch, one line per run."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, (key, label) in zip(axes.flat, CURVES):
        for row, hist in zip(result["runs"], result["_histories"]):
            pts = [(h["epoch"], h.get(key)) for h in hist if h.get(key) is not None and h.get("epoch") is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", ms=3, label=row["name"])
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if "accuracy" in key:
            ax.set_ylim(0, 1.02)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save_figure(fig, path)


def table_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    def f(v):
        return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    header = ["run", "model", *result["differing_keys"], "epochs", "val acc", "best val acc", "test acc", "test loss", "train s"]
    rows = [[r["name"], f(r["model"]), *[f(r["config"][k]) for k in result["differing_keys"]], str(r["epochs"]),
             f(r["final"]["val_accuracy"]), f(r["best_val_accuracy"]), f(r["test_accuracy"]), f(r["test_loss"]), f(r["train_seconds"])]
            for r in result["runs"]]
    return header, rows


def write_compare_html(result: dict, curves_png: Path, path: str | Path) -> Path:
    from cnnlab.insight.report import CSS, _img, _table
    from cnnlab.io import write_text_atomic

    header, rows = table_rows(result)
    warn = "".join(f"<p><b>warning:</b> {html.escape(w)}</p>" for w in result["warnings"])
    body = f"<h1>cnnlab compare</h1>{warn}{_table(header, rows)}{_img(curves_png, 'overlaid curves')}"
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>cnnlab compare</title><style>{CSS}</style></head><body>{body}</body></html>"
    write_text_atomic(Path(path), page)
    return Path(path)


def public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}
