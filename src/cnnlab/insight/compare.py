"""`cnnlab compare RUN...`: which architecture / learning rate / batch size was better, at a glance.

Reads each run folder's config.yaml, metrics.csv and run.json; returns the config keys that differ, the
final metrics, and writes overlaid curves (PNG) and a self-contained compare.html.
"""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import yaml

from cnnlab.errors import CnnlabError
from cnnlab.insight.plots import _save, plt

CURVES = (("train_loss", "train loss"), ("val_loss", "validation loss"), ("train_accuracy", "train accuracy"), ("val_accuracy", "validation accuracy"))
IGNORED_KEYS = {"device", "precision"}


def _float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def load_run(path: str | Path) -> dict:
    """config, per-epoch history and run.json of one run folder; missing files are named with the fix."""
    run = Path(path)
    if not run.is_dir():
        raise CnnlabError(f"{run}: not a run folder — pass folders written by `cnnlab train`")
    for name in ("config.yaml", "metrics.csv"):
        if not (run / name).exists():
            raise CnnlabError(f"{run}: missing {name} — not a complete run folder (was it trained with `cnnlab train`?)")
    try:
        config = yaml.safe_load((run / "config.yaml").read_text()) or {}
        with open(run / "metrics.csv", newline="") as f:
            history = [{k: _float(v) for k, v in row.items()} for row in csv.DictReader(f)]
        info = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    except (yaml.YAMLError, json.JSONDecodeError, csv.Error, UnicodeDecodeError) as e:
        raise CnnlabError(f"{run}: unreadable run files ({e.__class__.__name__}) — was the folder edited by hand?") from None
    return {"name": run.name, "path": str(run), "config": config, "history": history, "info": info}


def _unique_names(runs: list[dict]) -> None:
    names = [r["name"] for r in runs]
    if len(set(names)) < len(names):  # runs/a/train and runs/b/train: use the parent too
        for r in runs:
            r["name"] = f"{Path(r['path']).parent.name}/{r['name']}"


def compare_runs(paths: list[str | Path]) -> dict:
    """{"runs": [{name, path, status, config (differing keys), final metrics}], "differing_keys", "warnings"}."""
    if len(paths) < 1:
        raise CnnlabError("compare needs at least one run folder")
    runs = [load_run(p) for p in paths]
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
    return _save(fig, path)


def table_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    def f(v):
        return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    header = ["run", "model", *result["differing_keys"], "epochs", "val acc", "best val acc", "test acc", "test loss", "train s"]
    rows = [[r["name"], f(r["model"]), *[f(r["config"][k]) for k in result["differing_keys"]], str(r["epochs"]),
             f(r["final"]["val_accuracy"]), f(r["best_val_accuracy"]), f(r["test_accuracy"]), f(r["test_loss"]), f(r["train_seconds"])]
            for r in result["runs"]]
    return header, rows


def write_compare_html(result: dict, curves_png: Path, path: str | Path) -> Path:
    from cnnlab.engine.io import write_text_atomic
    from cnnlab.insight.report import CSS, _img, _table

    header, rows = table_rows(result)
    warn = "".join(f"<p><b>warning:</b> {html.escape(w)}</p>" for w in result["warnings"])
    body = f"<h1>cnnlab compare</h1>{warn}{_table(header, rows)}{_img(curves_png, 'overlaid curves')}"
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>cnnlab compare</title><style>{CSS}</style></head><body>{body}</body></html>"
    write_text_atomic(Path(path), page)
    return Path(path)


def public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}
