"""Cross-validation's summary: the pooled held-out metrics of K fold runs, which run to use, and the files.

    result = cnnlab.api.cross_validate("resnet9", "data/", folds=5, epochs=30)
    result.accuracy          # pooled held-out accuracy: every image scored once, by the run that held it out
    result.recommendation    # the one line that says what to use

engine/kfold.py trains the folds; this module pools their held-out predictions — accuracy over every image,
per-class precision/recall/F1 and the confusion matrix from scikit-learn (insight/metrics.py, the same report as
`cnnlab evaluate`), and mean ± sd of the fold accuracies — and writes ROOT/folds.json (status "completed" last,
so a folder with that status is whole), ROOT/heldout.csv, ROOT/confusion_matrix.png and ROOT/report.html.

Which run to use: none of the fold runs. Each trained on (K-1)/K of the images, and the one with the best
held-out score is best partly by the luck of its fold — choosing it by that score makes the score an optimistic
estimate. Cross-validation measures the configuration; the model to use is that configuration retrained on all
the images (`cnnlab train --config ROOT/fold1/config.yaml`: every fold run has the same config), and the pooled
accuracy is what to expect of it (slightly pessimistic: it trains on more images than each fold did).
"""

from __future__ import annotations

import html
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.engine import kfold as K
from cnnlab.engine import run_dir as rd
from cnnlab.errors import ConfigError
from cnnlab.insight import metrics as M
from cnnlab.io import write_text_atomic

CONFUSION_PNG, REPORT_HTML = "confusion_matrix.png", "report.html"
TEXT_TABLE_CLASSES = 20  # the printed summary lists per-class rows (and the confusion matrix up to 10 classes) below this


@dataclass
class CrossValidationResult:
    """A finished cross-validation: its folder, folds.json's content (`summary`) and each fold's held-out predictions."""

    root: Path
    summary: dict
    folds: list[K.FoldOutcome]

    @property
    def accuracy(self) -> float:
        """Accuracy over every cross-validated image, each scored by the fold run that held it out."""
        return self.summary["pooled"]["accuracy"]

    @property
    def recommendation(self) -> str:
        return self.summary["recommendation"]

    @property
    def runs(self) -> list[Path]:
        return [f.run_dir for f in self.folds]

    def __repr__(self) -> str:
        spread = self.summary["fold_accuracy"]
        return (f"CrossValidationResult(root={str(self.root)!r}, folds={len(self.folds)}, accuracy={self.accuracy:.4f}, "
                f"fold_accuracy={spread['mean']:.4f}±{spread['sd']:.4f})")

    def __str__(self) -> str:
        return summary_text(self.summary, self.root)


def cross_validate(model: Any = None, data: Any = None, *, folds: int | None = None, config=None, out: str | Path | None = None,
                   overwrite: bool = False, resume: str | Path | None = None, quiet: bool = False, spent_seconds: float = 0.0,
                   callbacks: list | None = None, reports: bool = True, **overrides: Any) -> CrossValidationResult:
    """K-fold cross-validation of a model (module or registry name) on a dataset (Dataset or SPEC): `folds` runs
    (default 5) under one folder (`out`, default runs/trainN), each holding out one stratified, seeded fold; keyword
    overrides are TrainConfig fields (epochs=5, seed=1, ...), applied to every fold. Returns the pooled summary.

    resume=ROOT continues an interrupted cross-validation (nothing else may be given). reports=False skips each
    fold run's report.html. Bad input (folds < 2, a class with fewer images than folds) is raised before anything
    is written.
    """
    on_fold_end = _write_fold_report if reports else None
    if resume is not None:
        given = [name for name, v in (("model", model), ("data", data), ("folds", folds), ("config", config), ("out", out)) if v is not None]
        if given or overrides:
            raise ConfigError(f"resume continues a cross-validation exactly as it started — drop {', '.join(given + list(overrides))}")
        cv = K.resume_cross_validation(resume, quiet=quiet, spent_seconds=spent_seconds, callbacks=callbacks, on_fold_end=on_fold_end)
    else:
        cv = K.cross_validate(model, data, folds=5 if folds is None else folds, config=config, out=out, overwrite=overwrite, quiet=quiet,
                              spent_seconds=spent_seconds, callbacks=callbacks, on_fold_end=on_fold_end, **overrides)
    return write_summary(cv)


def _write_fold_report(result, dataset) -> None:
    from cnnlab.insight.report import write_run_report

    write_run_report(result, dataset)  # a failure warns; the fold's model and held-out predictions are what count


# ---------------------------------------------------------------------------- pooling


def fold_spread(accuracies: list[float]) -> dict:
    """Mean, sample standard deviation, min and max of the fold accuracies (how much one run's score moves with
    the images it happens to hold out)."""
    accs = [float(a) for a in accuracies]
    return {"mean": statistics.mean(accs), "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0, "min": min(accs), "max": max(accs),
            "per_fold": accs}


def pooled_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    """The held-out predictions of every fold, concatenated, scored as one split: n, accuracy, loss (mean
    cross-entropy of the true class) and `cnnlab evaluate`'s report (per-class precision/recall/F1, macro and
    weighted averages, confusion matrix, ROC-AUC, calibration, most confused pairs)."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    report = M.classification_report(y, p, class_names)
    return {"n": int(len(y)), "correct": int((p.argmax(1) == y).sum()), **report,
            "loss": M._num(M.per_sample_losses(y, p).mean()) if len(y) else None}


def recommendation(n_images: int, k: int, accuracy: float, config_yaml: Path) -> str:
    """The one line that says which run to use (see the module doc for why it is none of the folds)."""
    return (f"use: retrain on all {n_images} images with this config — cnnlab train --config {config_yaml} — and expect about "
            f"{accuracy:.1%} (the pooled held-out accuracy); the {k} fold runs each trained on {k - 1}/{k} of the images and are "
            "kept to inspect, not to deploy")


def write_summary(cv: K.CrossValidation) -> CrossValidationResult:
    """Pool the folds and write ROOT/heldout.csv, confusion_matrix.png, report.html, then folds.json (completed)."""
    folds = sorted(cv.folds, key=lambda f: f.number)
    y = np.concatenate([f.y for f in folds])
    probs = np.concatenate([f.probs for f in folds])
    pooled = pooled_metrics(y, probs, cv.class_names)
    spread = fold_spread([f.accuracy for f in folds])
    root = cv.root
    summary = {**cv.state, "status": "completed", "folds": [f.entry for f in folds], "pooled": pooled, "fold_accuracy": spread}
    if pooled["n"] < cv.n_images:
        summary["notes"] = [*summary.get("notes", []), f"{cv.n_images - pooled['n']} held-out image(s) failed to decode and are not "
                                                       "scored (each fold run's bad_files.txt names them)"]
    summary["recommendation"] = recommendation(cv.n_images, cv.k, pooled["accuracy"], root / folds[0].run_dir.name / rd.CONFIG)
    summary["files"] = {"heldout": K.HELDOUT_CSV, "confusion_matrix": CONFUSION_PNG, "report": REPORT_HTML}
    write_text_atomic(root / K.HELDOUT_CSV, K.heldout_csv_text(folds, cv.class_names))
    _save_confusion_matrix(summary, root / CONFUSION_PNG)
    write_text_atomic(root / REPORT_HTML, report_html(summary, root))
    cv.state = summary
    cv.write_state()  # last: "completed" means every file above is there
    return CrossValidationResult(root, summary, folds)


def _save_confusion_matrix(summary: dict, path: Path) -> Path:
    from cnnlab.insight.figures import confusion_matrix_figure
    from cnnlab.plotting import save_figure

    pooled = summary["pooled"]
    fig = confusion_matrix_figure(pooled)
    fig.axes[0].set_title(f"{summary['k']}-fold cross-validation, {pooled['n']} held-out images\n(accuracy {pooled['accuracy']:.2%})")
    return save_figure(fig, path)


# ---------------------------------------------------------------------------- what users read


def _pct(v, digits: int = 2) -> str:
    return "-" if not isinstance(v, (int, float)) or v != v else f"{v:.{digits}%}"


def fold_rows(summary: dict, root: Path) -> tuple[list[str], list[list[str]]]:
    header = ["fold", "held out", "accuracy", "val accuracy", "epochs", "run"]
    rows = [[str(e["fold"]), str(e["n_heldout"]), _pct(e["accuracy"]), _pct(e.get("final_val_accuracy"), 1),
             "-" if e.get("epochs") is None else str(e["epochs"]), str(root / e["run"])] for e in summary["folds"]]
    return header, rows


def class_rows(pooled: dict) -> tuple[list[str], list[list[str]]]:
    header = ["class", "precision", "recall", "f1", "images"]
    rows = [[r["class"], f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", str(r["support"])] for r in pooled["per_class"]]
    rows += [[name.replace("_", " "), f"{pooled[name]['precision']:.4f}", f"{pooled[name]['recall']:.4f}", f"{pooled[name]['f1']:.4f}",
              str(pooled["n"])] for name in ("macro_avg", "weighted_avg")]
    return header, rows


def _columns(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    return ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in [header, *rows]]


def summary_text(summary: dict, root: Path) -> str:
    """What `cnnlab train --folds K` prints at the end."""
    pooled, spread, k = summary["pooled"], summary["fold_accuracy"], summary["k"]
    names = summary["classes"]
    lines = [f"{k}-fold cross-validation of {summary['config'].get('model')} on {summary['data']}: {summary['n_images']} images "
             f"({len(names)} classes), each held out once (stratified folds, seed {summary['seed']})"]
    lines += _columns(*fold_rows(summary, root))
    lines.append(f"pooled held-out accuracy {_pct(pooled['accuracy'])} ({pooled['correct']} of {pooled['n']} images); "
                 f"fold accuracy {_pct(spread['mean'], 1)} ± {_pct(spread['sd'], 1)} (mean ± sd over {k} folds, "
                 f"{_pct(spread['min'], 1)} to {_pct(spread['max'], 1)})")
    if len(names) <= TEXT_TABLE_CLASSES:
        lines += _columns(*class_rows(pooled))
    else:
        m = pooled["macro_avg"]
        lines.append(f"macro avg precision {m['precision']:.4f}, recall {m['recall']:.4f}, f1 {m['f1']:.4f} (per class: report.html)")
    if len(names) <= 10:
        counts = pooled["confusion_matrix"]["counts"]
        lines.append("confusion matrix (rows: true class, columns: predicted):")
        lines += ["  " + line for line in _columns(["", *names], [[n, *map(str, row)] for n, row in zip(names, counts)])]
    lines += [f"note: {n}" for n in summary.get("notes", [])]
    lines.append(summary["recommendation"])
    lines.append(f"saved {K.FOLDS_JSON}, {K.HELDOUT_CSV}, {CONFUSION_PNG} and {REPORT_HTML} in {root}")
    return "\n".join(lines)


def report_html(summary: dict, root: Path) -> str:
    """ROOT/report.html: the recommendation, the folds, the pooled metrics and confusion matrix (self-contained)."""
    from cnnlab.insight.report import CSS, _img, _table

    pooled, spread = summary["pooled"], summary["fold_accuracy"]
    title = f"cnnlab {summary['k']}-fold cross-validation {root.name}"
    metrics = [["images (each held out once)", pooled["n"]], ["pooled accuracy", _pct(pooled["accuracy"])],
               ["fold accuracy, mean ± sd", f"{_pct(spread['mean'])} ± {_pct(spread['sd'])}"],
               ["pooled loss", "-" if pooled["loss"] is None else f"{pooled['loss']:.4f}"],
               ["ROC-AUC", "-" if pooled["roc_auc"] is None else f"{pooled['roc_auc']:.4f}"],
               ["ECE", "-" if pooled["calibration"]["ece"] is None else f"{pooled['calibration']['ece']:.4f}"]]
    fold_header, folds = fold_rows(summary, root)
    fold_links = [[*r[:-1], f"{e['run']}/report.html"] for r, e in zip(folds, summary["folds"])]
    parts = [f"<h1>{html.escape(title)}</h1><p class='muted'>{html.escape(str(root.resolve()))} · data {html.escape(str(summary['data']))} · "
             f"model {html.escape(str(summary['config'].get('model')))} · seed {summary['seed']}</p>",
             f"<p><b>{html.escape(summary['recommendation'])}</b></p>",
             "".join(f"<p class='muted'>note: {html.escape(n)}</p>" for n in summary.get("notes", [])),
             "<h2>Pooled held-out metrics</h2>", _table(["metric", "value"], metrics),
             _table(*class_rows(pooled)),
             _img(root / CONFUSION_PNG, "pooled confusion matrix"),
             "<h2>Folds</h2>", _table([*fold_header[:-1], "report"], fold_links),
             "<p class='muted'>each fold run is an ordinary run folder: its test split is the fold it held out</p>"]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style></head>"
            f"<body>{''.join(parts)}</body></html>")
