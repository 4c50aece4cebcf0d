"""`cnnlab compare RUN...`: which architecture / learning rate / batch size was better, at a glance.

Reads each run folder (engine/run_dir.RunFolder: typed config, metrics history, run.json); returns the config
keys that differ, the final metrics, and draws one figure: train/val loss and accuracy per epoch, one colour per
run (the frozen-backbone epochs of a fine-tuned run dashed), beside the held-out accuracy of every run in the
order given, so a series of runs (docs/beyond-the-seed.md's walk) reads as a climb. A cross-validation folder
stands for its fold runs, a `cnnlab tune` folder for its best trial. The table names runs that differ in many
keys by a one-line setup (size, pretraining phases, augmentation, optimizer, batch) instead of a column per key.
"""

from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path

from cnnlab.engine.run_dir import CONFIG, METRICS, RunFolder
from cnnlab.errors import CnnlabError

CURVES = (("train_loss", "train loss"), ("val_loss", "validation loss"), ("train_accuracy", "train accuracy"), ("val_accuracy", "validation accuracy"))
IGNORED_KEYS = {"device", "precision"}
MAX_KEY_COLUMNS = 4  # more differing keys than this: one "setup" column instead of a column per key
TRIALS_CSV = "trials.csv"  # what `cnnlab tune --out DIR` writes (tune/study.py)


def load_run(path: str | Path, name: str | None = None) -> dict:
    """config (as a dict of the typed config's fields), per-epoch history and run.json of one run folder; missing
    or unreadable files are named with the fix."""
    run = RunFolder.open(path, need=(CONFIG, METRICS))
    return {"name": name or run.path.name, "path": str(run.path), "config": run.config().to_dict(), "history": run.metrics(), "info": run.info()}


def _unique_names(runs: list[dict]) -> None:
    names = [r["name"] for r in runs]
    if len(set(names)) < len(names):  # runs/a/train and runs/b/train: use the parent too
        for r in runs:
            r["name"] = f"{Path(r['path']).parent.name}/{r['name']}"


def is_tune_folder(path: str | Path) -> bool:
    p = Path(path)
    return (p / TRIALS_CSV).is_file() and not (p / CONFIG).exists()


def best_trial(folder: str | Path) -> tuple[Path, int]:
    """(run folder, number) of the best complete trial in a `cnnlab tune` folder's trials.csv, whose third column
    names the objective (val_accuracy: highest wins, val_loss: lowest; ties go to the earlier trial, as in Optuna)."""
    folder = Path(folder)
    path = folder / TRIALS_CSV
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise CnnlabError(f"{path}: unreadable ({e.__class__.__name__}) — was the file edited by hand?") from None
    objective = columns[2] if len(columns) > 2 else ""
    done = []
    for line, row in enumerate(rows, start=2):
        if row.get("state") == "complete" and row.get(objective):
            try:
                done.append((float(row[objective]), int(row["number"]), row.get("run_dir") or ""))
            except (TypeError, ValueError):
                raise CnnlabError(f"{path} line {line}: {objective} {row.get(objective)!r} or number {row.get('number')!r}"
                                  " is not a number — was the file edited by hand?") from None
    if objective not in ("val_accuracy", "val_loss") or not done:
        raise CnnlabError(f"{folder}: a tune folder without a complete trial yet — compare it when `cnnlab tune` has finished one,"
                          " or pass a trial's folder (trials/NNNN)")
    sign = -1 if objective == "val_accuracy" else 1
    value, number, recorded = min(done, key=lambda t: (sign * t[0], t[1]))
    run = folder / "trials" / f"{number:04d}"
    if not run.is_dir() and recorded:  # the study's storage may name a folder elsewhere (another machine's --out)
        run = Path(recorded)
    return run, number


def expand_runs(paths: list[str | Path]) -> list[str | Path]:
    """Run folders as given: a cross-validation folder (`cnnlab train --folds K`) replaced by its fold runs, a tune
    folder (`cnnlab tune`) by its best trial."""
    return [p for p, _ in _entries(paths)]


def _entries(paths: list[str | Path]) -> list[tuple[str | Path, str | None]]:
    """(run folder, display name or None for the folder's own name) for each argument."""
    from cnnlab.engine.kfold import fold_runs, is_cross_validation

    out: list[tuple[str | Path, str | None]] = []
    for p in paths:
        if is_tune_folder(p):
            run, number = best_trial(p)
            out.append((run, f"{Path(p).name} (best trial {number})"))
            continue
        folds = fold_runs(p)
        if not folds and is_cross_validation(p):
            raise CnnlabError(f"{p}: a cross-validation folder without a finished epoch in any fold yet — compare it when its folds have trained")
        out.extend((f, None) for f in folds or [p])
    return out


def frozen_epochs(cfg: dict, epochs_run: int) -> int:
    """How many of the run's epochs trained the head on a frozen pretrained backbone."""
    if not (cfg.get("pretrained") or cfg.get("weights")):
        return 0
    return epochs_run if cfg.get("freeze") else min(epochs_run, int(cfg.get("freeze_epochs") or 0))


def setup_text(cfg: dict, epochs_run: int, keys: set[str] | None = None) -> str:
    """One short line that tells runs of a series apart: size, pretraining phases, model arguments, augmentation,
    optimizer and LR, batch — each piece only when one of its keys is in `keys` (default: all of them)."""
    def shown(*names: str) -> bool:
        return keys is None or any(n in keys for n in names)

    parts = [f"{cfg['image_size']}px"] if cfg.get("image_size") and shown("image_size") else []
    frozen = frozen_epochs(cfg, epochs_run)
    if (cfg.get("pretrained") or cfg.get("weights")) and shown("pretrained", "weights", "freeze", "freeze_epochs", "epochs"):
        parts.append("frozen" if frozen == epochs_run else f"{frozen} frozen + {epochs_run - frozen} tuned")
    if cfg.get("model_args") and shown("model_args"):
        parts.append(" ".join(f"{k}={v}" for k, v in cfg["model_args"].items()))
    if shown("augment", "aug_args"):
        parts.append(" ".join([f"aug {cfg.get('augment')}", *(f"{k}={v}" for k, v in (cfg.get("aug_args") or {}).items())]))
    if shown("optimizer", "lr"):
        lr = cfg.get("lr")
        parts.append(f"{cfg.get('optimizer')} {lr:.2g}" if isinstance(lr, (int, float)) else str(cfg.get("optimizer")))
    if shown("batch_size"):
        parts.append(f"bs {cfg.get('batch_size')}")
    return " · ".join(parts)


def compare_runs(paths: list[str | Path]) -> dict:
    """{"runs": [{name, label, path, status, model, setup, config (differing keys), epochs, frozen_epochs, final metrics,
    best val, test}], "differing_keys", "warnings"}. A cross-validation folder stands for its fold runs (one row
    each), a tune folder for its best trial; rows keep the order given."""
    if len(paths) < 1:
        raise CnnlabError("compare needs at least one run folder")
    runs = [load_run(p, name) for p, name in _entries(paths)]
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
        vals = [h.get("val_accuracy") for h in r["history"] if _finite(h.get("val_accuracy"))]
        model = r["config"].get("model")
        rows.append({
            "name": r["name"], "label": r["name"] if r["name"] == model else f"{r['name']} ({model})",
            "path": r["path"], "status": r["info"].get("status", "unknown"), "model": model,
            "setup": setup_text(r["config"], len(r["history"]), set(differing)),
            "config": {k: r["config"].get(k) for k in differing},
            "epochs": len(r["history"]), "frozen_epochs": frozen_epochs(r["config"], len(r["history"])),
            "final": {k: last.get(k) for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")},
            "best_val_accuracy": max(vals) if vals else None,
            "test_accuracy": test.get("accuracy"), "test_loss": test.get("loss"),
            "train_seconds": (r["info"].get("seconds") or {}).get("train"),
        })
    return {"runs": rows, "differing_keys": differing, "warnings": warnings, "_histories": [r["history"] for r in runs]}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _draw_curves(ax, key: str, label: str, result: dict) -> bool:
    """One metric, one colour per run; a run's frozen-backbone epochs dashed up to where fine-tuning starts."""
    from matplotlib.ticker import MaxNLocator

    drawn = False
    for i, (row, hist) in enumerate(zip(result["runs"], result["_histories"])):
        pts = [(h["epoch"], h[key]) for h in hist if _finite(h.get(key)) and h.get("epoch") is not None]
        if not pts:
            continue
        drawn = True
        k = row["frozen_epochs"]
        frozen, rest = [p for p in pts if p[0] <= k], [p for p in pts if p[0] >= k]
        if frozen:
            ax.plot(*zip(*frozen), "o--", ms=3, mfc="white", color=f"C{i % 10}", label=None if rest[1:] else row["label"])
        if rest[1:] or not frozen:  # joined to the last frozen epoch (its open marker kept), so a two-phase run reads as one line
            line = rest if frozen else pts
            ax.plot(*zip(*line), "o-", ms=3, color=f"C{i % 10}", label=row["label"], markevery=list(range(1 if frozen else 0, len(line))))
    ax.set_title(label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if not drawn:
        ax.text(0.5, 0.5, "no run has a validation split" if key.startswith("val") else "no values", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
    return drawn


def _draw_climb(ax, result: dict) -> None:
    """Held-out (test) accuracy per run, in the order given, top to bottom."""
    rows = result["runs"]
    accs = [r["test_accuracy"] if _finite(r["test_accuracy"]) else None for r in rows]
    ys = list(range(len(rows)))[::-1]
    ax.barh(ys, [a or 0 for a in accs], color=[f"C{i % 10}" for i in range(len(rows))], height=0.6)
    low = max(0.0, math.floor((min(a for a in accs if a is not None) - 0.1) * 10) / 10)
    ax.set_xlim(low, 1.0)
    for y, a in zip(ys, accs):
        ax.text(low + 0.01 if a is None else a - 0.005, y, "no test split" if a is None else f"{a:.2%}",
                ha="left" if a is None else "right", va="center", color="0.3" if a is None else "white", fontsize=9, fontweight="bold")
    ax.set_yticks(ys)
    ax.set_yticklabels([r["name"] for r in rows])
    ax.set_title("held-out (test) accuracy")
    ax.grid(axis="x", alpha=0.3)


def compare_figure(result: dict):
    """The runs' curves overlaid (train/val loss and accuracy per epoch) and, when any run has a test score, their
    held-out accuracies side by side: a Figure (shown inline in a notebook; save_overlaid_curves writes it)."""
    from matplotlib.lines import Line2D

    from cnnlab.plotting import InlineFigure

    has_test = any(_finite(r["test_accuracy"]) for r in result["runs"])
    fig = InlineFigure(figsize=(16 if has_test else 11, 7.5))
    grid = fig.add_gridspec(2, 3 if has_test else 2, width_ratios=(1, 1, 0.8) if has_test else (1, 1))
    axes = [fig.add_subplot(grid[i // 2, i % 2]) for i in range(4)]
    lows = []
    for ax, (key, label) in zip(axes, CURVES):
        _draw_curves(ax, key, label, result)
        if "accuracy" in key:
            lows += [h[key] for hist in result["_histories"] for h in hist if _finite(h.get(key))]
    low = max(0.0, math.floor((min(lows, default=0.0) - 0.05) * 10) / 10)
    for ax in axes[2:]:
        ax.set_ylim(low, 1.01)
    if has_test:
        _draw_climb(fig.add_subplot(grid[:, 2]), result)
    handles, labels = axes[0].get_legend_handles_labels()
    if any(r["frozen_epochs"] for r in result["runs"]):
        handles.append(Line2D([], [], color="0.4", ls="--", marker="o", ms=3, mfc="white"))
        labels.append("frozen backbone (head only)")
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)))
    fig.tight_layout(rect=(0, 0.04 + 0.03 * math.ceil(len(labels) / 4), 1, 1))
    return fig


def save_overlaid_curves(result: dict, path: str | Path) -> Path:
    """compare_figure as a PNG (atomic)."""
    from cnnlab.plotting import save_figure

    return save_figure(compare_figure(result), path)


def _f(v) -> str:
    return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def _pct(v) -> str:
    return "-" if not _finite(v) else f"{v:.2%}"


def _seconds(v) -> str:
    return "-" if not _finite(v) else f"{v:.1f}" if v < 10 else f"{v:.0f}"


def _epochs_cell(r: dict) -> str:
    k = r["frozen_epochs"]
    return str(r["epochs"]) if not k else f"{r['epochs']} (frozen)" if k == r["epochs"] else f"{r['epochs']} ({k} frozen)"


def table_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """The comparison table: a column per differing config key, or one setup column when more keys differ."""
    keys = result["differing_keys"]
    per_key = len(keys) <= MAX_KEY_COLUMNS
    header = ["run", "model", *(keys if per_key else ["setup"]), "epochs", "val acc", "best val", "test acc", "test loss", "train s"]
    rows = [[r["name"], _f(r["model"]), *([_f(r["config"][k]) for k in keys] if per_key else [r["setup"]]), _epochs_cell(r),
             _pct(r["final"]["val_accuracy"]), _pct(r["best_val_accuracy"]), _pct(r["test_accuracy"]),
             "-" if not _finite(r["test_loss"]) else f"{r['test_loss']:.3f}", _seconds(r["train_seconds"])]
            for r in result["runs"]]
    return header, rows


def table_html(result: dict) -> str:
    """The table as HTML (compare.html; a notebook shows it with IPython.display.HTML); when it has a setup column,
    every differing key follows in a second table."""
    from cnnlab.insight.report import _table

    header, rows = table_rows(result)
    page = _table(header, rows)
    keys = result["differing_keys"]
    if len(keys) > MAX_KEY_COLUMNS:
        page += "<h2>settings that differ</h2>" + _table(["run", *keys], [[r["name"], *[_f(r["config"][k]) for k in keys]] for r in result["runs"]])
    return page


def write_compare_html(result: dict, curves_png: Path, path: str | Path) -> Path:
    from cnnlab.insight.report import CSS, _img
    from cnnlab.io import write_text_atomic

    warn = "".join(f"<p><b>warning:</b> {html.escape(w)}</p>" for w in result["warnings"])
    body = f"<h1>cnnlab compare</h1>{warn}{table_html(result)}{_img(curves_png, 'overlaid curves')}"
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>cnnlab compare</title><style>{CSS}</style></head><body>{body}</body></html>"
    write_text_atomic(Path(path), page)
    return Path(path)


def public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}
