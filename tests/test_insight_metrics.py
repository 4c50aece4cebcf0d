"""Evaluate metrics against scikit-learn (the oracle), hand-computed calibration, figures, CLI schema."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from cnnlab.insight import metrics as M


def _random_probs(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[y] * rng.random((n, 1))  # better than chance, not perfect
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


@pytest.mark.parametrize("k", [2, 4])
def test_report_matches_sklearn(k):
    y, probs = _random_probs(200, k, seed=k)
    names = [f"c{i}" for i in range(k)]
    rep = M.classification_report(y, probs, names)
    pred = probs.argmax(1)
    assert rep["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=list(range(k)), zero_division=0)
    for i, row in enumerate(rep["per_class"]):
        assert row["class"] == names[i] and row["support"] == s[i]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p[i], r[i], f[i]))
    assert rep["macro_avg"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert rep["weighted_avg"]["recall"] == pytest.approx(skm.recall_score(y, pred, average="weighted"))
    assert rep["confusion_matrix"]["counts"] == skm.confusion_matrix(y, pred).tolist()
    norm = np.array(rep["confusion_matrix"]["normalized"])
    assert norm == pytest.approx(skm.confusion_matrix(y, pred, normalize="true"), abs=1e-6)
    if k == 2:
        assert rep["roc_auc"] == pytest.approx(skm.roc_auc_score(y, probs[:, 1]))
        assert rep["top_k_accuracy"] == {}
    else:
        assert rep["roc_auc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr"))
        assert rep["top_k_accuracy"]["2"] == pytest.approx(skm.top_k_accuracy_score(y, probs, k=2))
        assert rep["top_k_accuracy"]["3"] == pytest.approx(skm.top_k_accuracy_score(y, probs, k=3))
    off_diag = sorted((c for i, row in enumerate(rep["confusion_matrix"]["counts"]) for j, c in enumerate(row) if i != j and c), reverse=True)
    assert [m["count"] for m in rep["most_confused"]] == off_diag[:10]
    json.dumps(rep, allow_nan=False)  # strict JSON: no NaN anywhere


def test_calibration_by_hand():
    # confidences 0.95 (right), 0.95 (wrong), 0.65 (right), 0.55 (right)
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.35, 0.65], [0.55, 0.45]])
    y = np.array([0, 1, 1, 0])
    cal = M.calibration(y, probs, bins=10)
    # bin (0.9,1]: conf .95, acc .5 -> 2/4*.45 ; bin (.6,.7]: conf .65 acc 1 -> 1/4*.35 ; bin (.5,.6]: .55 vs 1 -> 1/4*.45
    assert cal["ece"] == pytest.approx(0.5 * 0.45 + 0.25 * 0.35 + 0.25 * 0.45)
    assert [b["count"] for b in cal["bins"]] == [0, 0, 0, 0, 0, 1, 1, 0, 0, 2]
    assert cal["bins"][9]["accuracy"] == 0.5 and cal["bins"][0]["accuracy"] is None


def test_missing_class_gives_null_auc_and_zero_scores():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]])
    rep = M.classification_report(y, probs, ["a", "b", "c"])
    assert rep["roc_auc"] is None
    assert rep["per_class"][2] == {"class": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert rep["most_confused"] == [{"true": "b", "predicted": "c", "count": 1}]


def test_top_losses_order():
    y = np.array([0, 1, 0])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6]])
    tl = M.top_losses(y, probs, ["a", "b"])
    assert [t["index"] for t in tl] == [1, 2, 0]
    assert tl[0]["loss"] == pytest.approx(-np.log(0.2)) and tl[0]["predicted"] == "a" and tl[0]["true"] == "b"


def test_evaluate_cli_full_schema_and_plots(cli, trained_run, tmp_path):
    run, data = trained_run
    r = cli("evaluate", run, "--data", data, "--json", "--plots", tmp_path / "plots")
    assert r.code == 0, r
    res = json.loads(r.out)
    for key in ("split", "n", "loss", "accuracy", "top_k_accuracy", "per_class", "macro_avg", "weighted_avg", "roc_auc",
                "confusion_matrix", "calibration", "most_confused", "top_losses", "plots"):
        assert key in res, key
    counts = np.array(res["confusion_matrix"]["counts"])
    assert counts.sum() == res["n"] == 60
    assert res["accuracy"] == pytest.approx(np.trace(counts) / 60)
    assert res["confusion_matrix"]["labels"] == ["circle", "square"]
    assert sum(b["count"] for b in res["calibration"]["bins"]) == 60
    assert len(res["top_losses"]) == 16
    for name in ("confusion_matrix", "calibration", "per_class", "most_confused", "top_losses", "predictions"):
        assert (tmp_path / "plots").joinpath(res["plots"][name].rsplit("/", 1)[-1]).stat().st_size > 1000, name
    text = cli("evaluate", run, "--data", data)
    assert text.code == 0 and "precision" in text.out and "circle" in text.out and "ROC-AUC" in text.out
