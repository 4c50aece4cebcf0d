"""report.html: one self-contained page per run (images embedded as base64 PNG, no network needed).

It leads with what a user came for, then how it was made. Sections: results (final and best accuracy and loss:
test, val, train), training curves + per-epoch table, evaluation (metrics table, per-class table, confusion
matrix), sample predictions, top losses, Grad-CAM examples; then the dataset (class counts, sample and augmented
grids), the model summary, the run's metadata (status, versions, timings) and the resolved config. A multi-label
run adds mAP to the results, and its evaluation shows per-class precision/recall/F1/AP at each class's threshold
with micro and macro averages instead of a confusion matrix.
Written at the end of every training run (api.train) and by `cnnlab report RUN [--data SPEC]`.
"""

from __future__ import annotations

import base64
import html
import warnings
from pathlib import Path

import numpy as np

from cnnlab.engine.run_dir import RunFolder, metric_text
from cnnlab.errors import CnnlabError
from cnnlab.io import write_text_atomic

GRADCAM_EXAMPLES = 4
TOP_LOSSES = 8  # small galleries: the page is written after every training run
REPORT_BATCH = 64  # evaluation batch: bounds the activations held at once

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#1f2328}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:right;font-size:.92em}
th{background:#f6f8fa} td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:4px 0} .muted{color:#656d76} .grid{display:flex;flex-wrap:wrap;gap:8px}
pre{background:#f6f8fa;padding:.8em;overflow:auto;font-size:.88em}
"""


def _img(path: str | Path, alt: str) -> str:
    return _png(Path(path).read_bytes(), alt)


def _fig(fig, alt: str) -> str:
    """A Figure (plotting / insight.figures) embedded as PNG: the same figure `evaluate --plots` saves."""
    from cnnlab.plotting import figure_png

    return _png(figure_png(fig), alt)


def _png(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _pct(v) -> str:
    return "-" if not isinstance(v, (int, float)) or v != v else f"{v:.2%}"


def _section_results(run: RunFolder, res: dict | None) -> str:
    """The numbers first: test (scored at the end of training), the final and best val epoch, the final train epoch,
    and the split this page evaluated (when it differs from what training scored)."""
    info = run.info()
    rows_m = run.metrics() if run.metrics_csv.exists() else []
    final = info.get("final") or (rows_m[-1] if rows_m else {})
    rows = []
    multi = (info.get("dataset") or {}).get("task") == "multi_label" or (res is not None and res.get("task") == "multi_label")
    test = info.get("test")
    if test:
        rows.append(["test" + (" (TTA)" if test.get("tta") else ""), _pct(test.get("accuracy")), _fmt(test.get("loss")), test.get("n", "-"),
                     "end of training", _fmt(test.get("map"))])
    if final.get("val_accuracy") is not None:
        rows.append(["val", _pct(final.get("val_accuracy")), _fmt(final.get("val_loss")), "", f"final epoch ({final.get('epoch', '-')})",
                     _fmt(final.get("val_map"))])
    best = info.get("best")
    if best is None and rows_m:
        vals = [r for r in rows_m if isinstance(r.get("val_accuracy"), float) and r["val_accuracy"] == r["val_accuracy"]]
        top = max(vals, key=lambda r: r["val_accuracy"], default=None)
        best = {"accuracy": top["val_accuracy"], "epoch": top["epoch"]} if top else None
    if best:
        rows.append(["val (best epoch)", _pct(best.get("accuracy")), "", "", f"epoch {best.get('epoch', '-')}", _fmt(best.get("map"))])
    if final.get("train_accuracy") is not None:
        rows.append(["train", _pct(final.get("train_accuracy")), _fmt(final.get("train_loss")), "", f"final epoch ({final.get('epoch', '-')})", ""])
    if res is not None and not (test and res["split"] == "test" and res["n"] == test.get("n") and not test.get("tta")):
        rows.append([f"{res['split']} (this report)", _pct(res["accuracy"]), _fmt(res["loss"]), res["n"], "evaluated for this page, fp32",
                     _fmt(res.get("map"))])
    status = info.get("status")
    note = "" if status in (None, "completed") else f'<p class="muted">status: {html.escape(str(status))}</p>'
    if not rows:
        return "<h2>Results</h2>" + note + '<p class="muted">no metrics recorded</p>'
    if not multi:
        return "<h2>Results</h2>" + note + _table(["split", "accuracy", "loss", "images", "when"], [r[:5] for r in rows])
    return ("<h2>Results</h2>" + note + '<p class="muted">multi-label: accuracy is the share of label decisions that are right'
            " (per image and class), mAP the mean average precision over the classes; the best epoch is the one with the best val"
            " mAP</p>" + _table(["split", "accuracy", "loss", "images", "when", "mAP"], rows))


def _section_run(run: RunFolder) -> str:
    info = run.info()
    keys = [k for k, v in info.items() if not isinstance(v, (dict, list))]
    return "<h2>Run</h2>" + _table(["field", "value"], [[k, _fmt(info[k])] for k in keys])


def _section_config(run: RunFolder) -> str:
    p = run.config_yaml  # shown as written: the file a user passes to `cnnlab train --config`
    return "<h2>Config</h2>" + (f"<pre>{html.escape(p.read_text())}</pre>" if p.exists() else '<p class="muted">no config.yaml</p>')


def _section_dataset(run: RunFolder, ds) -> str:
    out = ["<h2>Dataset</h2>"]
    summary = ds.summary() if ds is not None else run.info().get("dataset")
    if summary:
        splits = list(summary["class_counts"])
        rows = [[c] + [summary["class_counts"][s].get(c, 0) for s in splits] for c in summary["classes"]]
        rows.append(["total"] + [summary["splits"][s] for s in splits])
        h, w, c = summary["image_shape"]
        out.append(f"<p>{html.escape(str(summary['spec']))} ({html.escape(str(summary.get('format', '')))}), images {h}x{w}x{c}, "
                   f"{summary.get('bad_files', 0)} bad files skipped</p>")
        out.append(_table(["class"] + splits, rows))
    if run.samples_png.exists():
        out.append(_img(run.samples_png, "training samples"))
    if ds is not None:
        out.append(_augmented_grid(run, ds))
    return "".join(out)


def _augmented_grid(run: RunFolder, ds) -> str:
    """The training images as the run's augmentation saw them (when it used any): the notebook's show_augmented."""
    if not run.config_yaml.exists():
        return ""
    cfg = run.config()
    if cfg.augment == "none":
        return ""
    try:
        from cnnlab.data.augment import resolve_ops
        from cnnlab.insight.notebook import augmented_samples
        from cnnlab.plotting import grid_figure

        if resolve_ops(cfg.augment, cfg.aug_args) == resolve_ops("none"):  # every op overridden to off
            return ""
        imgs, titles, preset = augmented_samples(ds, cfg.augment, cfg.aug_args, cfg.train_size, n=16, seed=cfg.seed)
        return _fig(grid_figure(imgs, titles, suptitle=f"augmented ({preset})"), "augmented samples")
    except Exception as e:  # augmentation is another module's: the page still renders without this grid
        return f'<p class="muted">augmented grid unavailable ({html.escape(e.__class__.__name__)}: {html.escape(str(e))})</p>'


def _section_model(clf) -> str:
    from cnnlab.insight.summary import GLOBAL, summarize

    s = summarize(clf.model, clf.input_shape)
    rows = [[r["name"], r["op"], "x".join(map(str, r["output_shape"])), f"{r['parameters']:,}" if r["parameters"] else "",
             f"{r['macs']:,}" if r["macs"] else "", "global" if r["receptive_field"] == GLOBAL else r["receptive_field"],
             "" if r["stride"] is None else r["stride"]] for r in s["layers"]]
    return (f"<h2>Model: {html.escape(s['model'])}</h2><p>{s['total_parameters']:,} parameters, "
            f"{s['total_macs']:,} multiply-accumulates per image; weights: {html.escape(s['weights'])}</p>"
            + _table(["layer", "op", "output", "parameters", "MACs", "receptive field", "stride"], rows))


def _section_curves(run: RunFolder) -> str:
    from cnnlab.plotting import curves_figure

    if not run.metrics_csv.exists():
        return ""
    rows = run.metrics()
    out = ["<h2>Training</h2>"]
    if run.curves_png.exists():
        out.append(_img(run.curves_png, "training curves"))
    elif rows:
        out.append(_fig(curves_figure(rows), "training curves"))
    if rows:
        cols = list(rows[0])
        out.append(_table(cols, [[_cell(r[c]) for c in cols] for r in rows]))
    return "".join(out)


def _cell(value) -> str:
    """A metrics value as the table shows it: a whole number as metrics.csv writes it, others to 4 decimals, empty blank."""
    text = metric_text(value)
    try:
        f = float(text)
    except ValueError:
        return text
    return str(int(f)) if f.is_integer() and "." not in text else _fmt(f)


def _evaluate(clf, ds) -> tuple[dict, object]:
    """(the evaluate report, the images it scored) on the test split, else val: streamed files that fail to decode are
    not scored. Batches of 64: fp32 activations of 256 images were the peak memory of a whole run (+0.56 GB at 100 px)."""
    from cnnlab.insight.evaluation import evaluate_split_with_images

    return evaluate_split_with_images(clf, ds, ds.default_eval_split(), batch_size=REPORT_BATCH)


def _section_multi_label_evaluation(res: dict) -> str:
    from cnnlab.insight import figures

    return "".join([
        f"<h2>Evaluation ({html.escape(res['split'])}, {res['n']} images)</h2>",
        _table(["metric", "value"], [["loss", _fmt(res["loss"])], ["mAP", _fmt(res["map"])], ["micro F1", _fmt(res["micro_avg"]["f1"])],
                                     ["macro F1", _fmt(res["macro_avg"]["f1"])], ["accuracy per label", _fmt(res["accuracy"])],
                                     ["exact match", _fmt(res["exact_match"])]]),
        _table(["class", "precision", "recall", "f1", "AP", "support", "predicted", "threshold"],
               [[r["class"], _fmt(r["precision"]), _fmt(r["recall"]), _fmt(r["f1"]), _fmt(r["average_precision"]), r["support"],
                 r["predicted"], f"{r['threshold']:.3f}"] for r in res["per_class"]]
               + [[n.replace("_", " "), _fmt(res[n]["precision"]), _fmt(res[n]["recall"]), _fmt(res[n]["f1"]), "", "", "", ""]
                  for n in ("micro_avg", "macro_avg")]),
        _fig(figures.per_class_figure(res), "per-class precision, recall and F1")])


def _section_evaluation(res: dict) -> str:
    from cnnlab.insight import figures

    if res.get("task") == "multi_label":
        return _section_multi_label_evaluation(res)
    return "".join([
        f"<h2>Evaluation ({html.escape(res['split'])}, {res['n']} images)</h2>",
        _table(["metric", "value"], [["loss", _fmt(res["loss"])], ["accuracy", _fmt(res["accuracy"])], ["ROC-AUC", _fmt(res["roc_auc"])],
                                     ["ECE", _fmt(res["calibration"]["ece"])]]
               + [[f"top-{k} accuracy", _fmt(v)] for k, v in res["top_k_accuracy"].items()]),
        _table(["class", "precision", "recall", "f1", "support"],
               [[r["class"], _fmt(r["precision"]), _fmt(r["recall"]), _fmt(r["f1"]), r["support"]] for r in res["per_class"]]
               + [[n.replace("_", " "), _fmt(res[n]["precision"]), _fmt(res[n]["recall"]), _fmt(res[n]["f1"]), res["n"]]
                  for n in ("macro_avg", "weighted_avg")]),
        _fig(figures.confusion_matrix_figure(res), "confusion matrix")])


def _section_predictions(run: RunFolder) -> str:
    """The prediction grid training drew (test split, else val)."""
    if not run.predictions_png.exists():
        return ""
    return "<h2>Predictions</h2>" + _img(run.predictions_png, "sample predictions")


def _section_top_losses(res: dict, scored) -> str:
    from cnnlab.insight import figures

    if not res["top_losses"]:
        return ""
    return "<h2>Top losses</h2>" + _fig(figures.top_losses_figure(scored.x, res["top_losses"][:TOP_LOSSES]), "top losses")


def _section_gradcam(clf, scored, names: list[str], n: int) -> str:
    from cnnlab.data.dataset import label_text
    from cnnlab.insight.gradcam import explain_image
    from cnnlab.plotting import grid_figure

    if not n:
        return ""
    idx = np.random.default_rng(0).choice(n, size=min(GRADCAM_EXAMPLES, n), replace=False)
    tiles, titles = [], []
    for i in idx:
        img = scored.x[i]
        e = explain_image(clf, img)
        tiles += [img if img.shape[2] == 3 else np.repeat(img, 3, axis=2), e["overlay"]]
        truth = label_text(scored.y[i], names)  # multi-label: every true label
        titles += [f"true {truth}", f"{e['class']} {e['probability']:.0%} · {e['layer']}"]
    return "<h2>Grad-CAM (predicted class)</h2>" + _fig(grid_figure(np.stack(tiles), titles), "Grad-CAM examples")


def build_report(run_dir: str | Path, dataset=None, clf=None) -> str:
    """The report's HTML. `dataset`/`clf` default to what the run folder names (config.yaml, model file)."""
    from cnnlab.engine.predictor import dataset_for_model, load_classifier

    run = RunFolder(run_dir)
    if not run.path.is_dir():
        raise CnnlabError(f"{run.path}: no such run folder")
    if clf is None:
        if not run.model_file.exists():
            raise CnnlabError(f"{run.path}: no {run.model_file.name} — the run did not finish (resume it with `cnnlab train --resume {run.path}`)")
        clf = load_classifier(run.path)
    if dataset is None and run.config_yaml.exists():
        dataset = dataset_for_model(clf, run.config().data)
    res = scored = None
    if dataset is not None:
        eval_ds = dataset_for_model(clf, dataset)
        res, scored = _evaluate(clf, eval_ds)
    title = f"cnnlab run {run.path.name}"
    parts = [f"<h1>{html.escape(title)}</h1><p class='muted'>{html.escape(str(run.path.resolve()))}</p>",
             # what a user came for: the numbers, the curves, the confusion matrix, predictions and mistakes
             _section_results(run, res), _section_curves(run)]
    if res is not None:
        parts.append(_section_evaluation(res))
    parts.append(_section_predictions(run))
    if res is not None:
        parts += [_section_top_losses(res, scored), _section_gradcam(clf, scored, clf.class_names, res["n"])]
    # then how it was made
    parts += [_section_dataset(run, dataset), _section_model(clf), _section_run(run), _section_config(run)]
    body = "".join(parts)
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style></head><body>{body}</body></html>"


def write_report(run_dir: str | Path, dataset=None, clf=None) -> Path:
    """Write RUN/report.html atomically; returns its path."""
    path = RunFolder(run_dir).report_html
    write_text_atomic(path, build_report(run_dir, dataset, clf))
    return path


def write_run_report(result, dataset=None) -> Path | None:
    """After training: write report.html for a TrainResult; a failure warns and never fails the run."""
    try:
        from cnnlab.engine.predictor import load_classifier

        return write_report(result.run_dir, dataset, load_classifier(result))
    except Exception as e:  # the trained model is what matters; the page can be rebuilt with `cnnlab report`
        warnings.warn(f"report.html not written ({e.__class__.__name__}: {e}) — rebuild it with `cnnlab report {result.run_dir}`", stacklevel=2)
        return None
