"""K-fold cross-validation (`cnnlab train --folds K`, cnnlab.cross_validate): the folds, the pooled metrics against
scikit-learn on the fold models re-run by hand, every data source, compare, resume, and each bad input."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

import cnnlab
from cnnlab.cli import main
from cnnlab.data.builtin import make_shapes
from cnnlab.engine.kfold import stratified_folds
from cnnlab.errors import ConfigError, DataError, TrainingError

from conftest import write_image_folder, write_seed_csv
from test_errors import assert_clean_error

FAST = ("--model", "seed_cnn", "--epochs", "1", "--batch-size", "8", "--image-size", "32", "--precision", "fp32")
API_FAST = {"epochs": 1, "batch_size": 8, "precision": "fp32", "reports": False, "quiet": True}
COUNTS = {"circle": 9, "square": 7, "triangle": 5}  # uneven classes: 21 images


def uneven_folder(root: Path, size: int = 32) -> Path:
    x, y, names = make_shapes(n=60, size=size, classes=3, seed=2)
    for c, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i, img in enumerate(x[y == c][: COUNTS[name]]):
            Image.fromarray(img).save(root / name / f"{name}_{i:02d}.png")
    return root


def heldout_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory, one_thread):
    """(cross-validation folder, data folder, printed output) of `cnnlab train --folds 3 --seed 3` on 21 images."""
    base = tmp_path_factory.mktemp("kfold")
    data = uneven_folder(base / "shapes")
    root = base / "cv"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["train", "--data", str(data), "--folds", "3", "--seed", "3", "--out", str(root), "--quiet", *FAST])
    assert code == 0, out.getvalue()
    return root, data, out.getvalue()


# ---------------------------------------------------------------------------- the folds


def test_stratified_folds_hold_out_every_image_once_in_near_equal_parts_per_class_and_overall():
    rng = np.random.default_rng(0)
    y = rng.permutation(np.repeat(np.arange(4), [13, 7, 5, 22]))
    names = ["a", "b", "c", "d"]
    fold = stratified_folds(y, names, 5, seed=1)
    assert sorted(set(fold.tolist())) == [0, 1, 2, 3, 4]  # every image in exactly one of the 5 folds
    per_class = np.array([[np.sum((fold == j) & (y == c)) for j in range(5)] for c in range(4)])
    assert (per_class.sum(1) == [13, 7, 5, 22]).all()
    assert (per_class.max(1) - per_class.min(1) <= 1).all()  # stratified: a class's share per fold differs by at most 1
    totals = np.bincount(fold, minlength=5)
    assert totals.max() - totals.min() <= 1  # the larger parts rotate over the folds


def test_stratified_folds_depend_only_on_the_seed():
    y = np.repeat(np.arange(3), 10)
    names = ["x", "y", "z"]
    a, b, other = stratified_folds(y, names, 3, seed=4), stratified_folds(y, names, 3, seed=4), stratified_folds(y, names, 3, seed=5)
    assert (a == b).all() and (a != other).any()


def test_cli_folds_hold_out_every_image_once_stratified_and_as_seeded(cv_run):
    root, data, out = cv_run
    rows = heldout_rows(root / "heldout.csv")
    files = sorted(str(p) for p in data.rglob("*.png"))
    assert sorted(r["path"] for r in rows) == files  # every image held out exactly once
    per_fold = {(r["fold"], r["true"]) for r in rows}
    assert {f for f, _ in per_fold} == {"1", "2", "3"}
    for name, n in COUNTS.items():
        counts = [sum(r["fold"] == f and r["true"] == name for r in rows) for f in ("1", "2", "3")]
        assert sum(counts) == n and max(counts) - min(counts) <= 1, (name, counts)
    # the same assignment from the data reloaded and the library's fold function with --seed 3
    ds = cnnlab.load_dataset(data, val_split=0.0, image_size=32)
    fold = stratified_folds(ds.train.y, ds.class_names, 3, seed=3)
    assert {r["path"]: int(r["fold"]) for r in rows} == {p: int(f) + 1 for p, f in zip(ds.train.paths, fold)}
    for k in (1, 2, 3):  # each fold run's test split is its fold, and it knows its own held-out images
        info = json.loads((root / f"fold{k}" / "run.json").read_text())
        own = heldout_rows(root / f"fold{k}" / "heldout.csv")
        assert info["status"] == "completed" and info["test"]["n"] == len(own) == sum(r["fold"] == str(k) for r in rows)
        assert {r["path"] for r in own} == {r["path"] for r in rows if r["fold"] == str(k)}
    configs = [yaml.safe_load((root / f"fold{k}" / "config.yaml").read_text()) for k in (1, 2, 3)]
    assert configs[0] == configs[1] == configs[2] and configs[0]["data"] == str(data) and configs[0]["seed"] == 3


def test_pooled_metrics_equal_scikit_learn_on_the_fold_models_rerun_by_hand(cv_run):
    root, _, out = cv_run
    summary = json.loads((root / "folds.json").read_text())
    assert summary["status"] == "completed" and summary["k"] == 3 and summary["n_images"] == 21
    names = summary["classes"]
    y_true, y_pred, accs, sizes = [], [], [], []
    for k in (1, 2, 3):  # independent: load each fold's model file and score its held-out images ourselves
        clf = cnnlab.load(root / f"fold{k}")
        own = heldout_rows(root / f"fold{k}" / "heldout.csv")
        probs = clf.predict_proba(np.stack([clf.load_image(r["path"]) for r in own]))
        y_true += [names.index(r["true"]) for r in own]
        y_pred += probs.argmax(1).tolist()
        info = json.loads((root / f"fold{k}" / "run.json").read_text())
        accs.append(info["test"]["accuracy"])
        sizes.append(info["test"]["n"])
    pooled = summary["pooled"]
    assert pooled["n"] == 21 and pooled["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert pooled["accuracy"] == pytest.approx(np.dot(accs, sizes) / sum(sizes), abs=1e-12)  # = the runs' own test scores
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2], zero_division=0)
    for i, row in enumerate(pooled["per_class"]):
        assert row["class"] == names[i] and row["support"] == s[i] == COUNTS[names[i]]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p[i], r[i], f[i]), abs=1e-12)
    assert pooled["confusion_matrix"]["counts"] == confusion_matrix(y_true, y_pred, labels=[0, 1, 2]).tolist()
    spread = summary["fold_accuracy"]
    assert spread["mean"] == pytest.approx(np.mean(accs)) and spread["sd"] == pytest.approx(np.std(accs, ddof=1))
    # printed: the pooled line, mean ± sd, and the one line that says what to use
    assert f"pooled held-out accuracy {pooled['accuracy']:.2%} ({pooled['correct']} of 21 images)" in out
    assert f"fold accuracy {spread['mean']:.1%} ± {spread['sd']:.1%}" in out
    use = [line for line in out.splitlines() if line.startswith("use: ")]
    assert use == [summary["recommendation"]] and f"cnnlab train --config {root / 'fold1' / 'config.yaml'}" in use[0]
    assert (root / "confusion_matrix.png").stat().st_size > 5000
    page = (root / "report.html").read_text()
    assert summary["recommendation"] in page and "data:image/png;base64," in page and "fold3/report.html" in page
    assert all((root / f"fold{k}" / "report.html").is_file() for k in (1, 2, 3))


def test_compare_shows_one_row_per_fold(cli, cv_run, tmp_path):
    root, _, _ = cv_run
    summary = json.loads((root / "folds.json").read_text())
    for args in ([root], sorted(root.glob("fold[0-9]*"))):
        r = cli("compare", *args, "--out", tmp_path / "cmp", "--json")
        assert r.code == 0 and r.err == "", r
        rows = json.loads(r.out)["runs"]
        assert [x["name"] for x in rows] == ["fold1", "fold2", "fold3"]
        assert [x["test_accuracy"] for x in rows] == [e["accuracy"] for e in summary["folds"]]
    text = cli("compare", root, "--out", tmp_path / "cmp")
    assert text.code == 0 and all(f"fold{k}" in text.out for k in (1, 2, 3))


# ---------------------------------------------------------------------------- every data source


def _labels_table(root: Path) -> dict:
    x, y, names = make_shapes(n=24, size=32, classes=2, seed=3)
    (root / "imgs" / "sub").mkdir(parents=True)
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        for i, (img, label) in enumerate(zip(x, y)):
            rel = f"sub/p{i:02d}.png" if i % 2 else f"p{i:02d}.png"
            Image.fromarray(img).save(root / "imgs" / rel)
            w.writerow([rel, names[label]])
    return {"data": str(root / "imgs"), "labels": str(root / "labels.csv"), "image_size": 32}


def _split_folders(root: Path) -> dict:
    for part, n in (("train", 8), ("valid", 3), ("test", 3)):
        write_image_folder(root / part, n_per_class=n, size=32)
    return {"data": str(root), "image_size": 32}


def _npz(root: Path) -> dict:
    x, y, _ = make_shapes(n=30, size=32, classes=3, seed=4)
    root.mkdir()
    np.savez(root / "d.npz", x=x, y=y)
    return {"data": str(root / "d.npz")}


SOURCES = {  # name: (make(tmp) -> options, test images left out)
    "image folder, streamed": (lambda t: {"data": str(write_image_folder(t / "f", n_per_class=9, size=32)), "stream": True, "workers": 0,
                                            "image_size": 32}, 0),
    "train/valid/test folders": (_split_folders, 6),
    "labels table": (_labels_table, 0),
    "seed CSV": (lambda t: {"data": str(write_seed_csv(t / "seed", n_train=36, n_test=10))}, 10),
    "npz": (lambda t: _npz(t / "npz"), 0),
    "builtin": (lambda t: {"data": "builtin:shapes?n=40&size=16&classes=2", "image_size": 32}, 8),
}


@pytest.mark.parametrize("source", list(SOURCES))
def test_every_source_is_cross_validated_over_its_training_images(source, tmp_path, one_thread):
    make, left_out = SOURCES[source]
    opts = make(tmp_path)
    spec = opts.pop("data")
    load_opts = {k: v for k, v in opts.items() if k in ("labels", "image_size", "stream", "workers")}
    ds = cnnlab.load_dataset(spec, val_split=0.0, **load_opts)
    n = len(ds.train) + len(ds.splits.get("val", ()))
    res = cnnlab.cross_validate("seed_cnn", spec, folds=3, out=tmp_path / "cv", **opts, **API_FAST)
    rows = heldout_rows(tmp_path / "cv" / "heldout.csv")
    assert sorted(int(r["index"]) for r in rows) == list(range(n))  # every cross-validated image exactly once
    assert res.summary["n_images"] == n and res.summary["pooled"]["n"] == n
    assert res.accuracy == pytest.approx(np.mean([r["true"] == r["predicted"] for r in rows]))
    assert [p.name for p in res.runs] == ["fold1", "fold2", "fold3"]
    if left_out:
        assert res.summary["left_out"] == {"test": left_out}
        assert any(f"test split ({left_out} images) is left out" in note for note in res.summary["notes"])
    else:
        assert res.summary["left_out"] == {}
    if source == "train/valid/test folders":  # the dataset's own val split joins the folds
        assert any("val split (6 images) joins the folds" in note for note in res.summary["notes"])
    if source == "image folder, streamed":
        assert json.loads((tmp_path / "cv" / "fold1" / "run.json").read_text())["dataset"]["stream"] is True


def test_api_takes_a_dataset_and_a_module_and_every_fold_starts_from_its_weights(tmp_path, one_thread):
    opts = _npz(tmp_path / "npz")
    ds = cnnlab.load_dataset(opts["data"], image_size=32)  # with its default 10% val split: it joins the folds
    model = cnnlab.create_model("seed_cnn", ds, seed=11)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    res = cnnlab.api.cross_validate(model, ds, folds=2, out=tmp_path / "cv", **API_FAST)
    assert res.summary["n_images"] == 30 and res.summary["pooled"]["n"] == 30
    assert all((model.state_dict()[k] == v).all() for k, v in first.items())  # the caller's module is not trained
    assert "cross_validate" in cnnlab.api.__all__ and "cross_validate" in cnnlab.__all__ and cnnlab.cross_validate is cnnlab.api.cross_validate


def test_overwrite_replaces_an_earlier_cross_validation(cli, tmp_path, one_thread):
    spec = _npz(tmp_path / "npz")["data"]
    cnnlab.cross_validate("seed_cnn", spec, folds=3, out=tmp_path / "cv", **API_FAST)
    with pytest.raises(cnnlab.CnnlabError, match="already holds a cross-validation"):
        cnnlab.cross_validate("seed_cnn", spec, folds=2, out=tmp_path / "cv", **API_FAST)
    res = cnnlab.cross_validate("seed_cnn", spec, folds=2, out=tmp_path / "cv", overwrite=True, **API_FAST)
    assert res.summary["k"] == 2 and {r["fold"] for r in heldout_rows(tmp_path / "cv" / "heldout.csv")} == {"1", "2"}
    assert not (tmp_path / "cv" / "fold3" / "model.safetensors").exists()
    r = cli("compare", tmp_path / "cv", "--out", tmp_path / "cmp", "--json")
    assert r.code == 0 and [x["name"] for x in json.loads(r.out)["runs"]] == ["fold1", "fold2"], r


# ---------------------------------------------------------------------------- interrupted, resumed


class InterruptFold2(cnnlab.Callback):
    def on_epoch_end(self, run, row):
        if run.run_dir.name == "fold2" and row["epoch"] == 1:
            raise KeyboardInterrupt


def test_an_interrupted_cross_validation_resumes_to_the_same_result(cli, tmp_path, one_thread):
    spec = _npz(tmp_path / "npz")["data"]
    opts = {**API_FAST, "epochs": 2, "deterministic": True}
    whole = cnnlab.cross_validate("seed_cnn", spec, folds=3, out=tmp_path / "whole", **opts)
    with pytest.raises(TrainingError, match=f"interrupted in fold 2/3 .* cnnlab train --resume {tmp_path / 'cut'}"):
        cnnlab.cross_validate("seed_cnn", spec, folds=3, out=tmp_path / "cut", callbacks=[InterruptFold2()], **opts)
    state = json.loads((tmp_path / "cut" / "folds.json").read_text())
    assert state["status"] == "interrupted" and [e["fold"] for e in state["folds"]] == [1]
    assert not (tmp_path / "cut" / "fold3").exists() and not (tmp_path / "cut" / "heldout.csv").exists()
    r = cli("train", "--resume", tmp_path / "cut", "--quiet")
    assert r.code == 0, r
    assert "fold 1/3: finished earlier" not in r.out and "pooled held-out accuracy" in r.out  # --quiet: only the summary
    a, b = heldout_rows(tmp_path / "whole" / "heldout.csv"), heldout_rows(tmp_path / "cut" / "heldout.csv")
    assert [(x["index"], x["fold"], x["predicted"]) for x in a] == [(x["index"], x["fold"], x["predicted"]) for x in b]
    pa = np.array([[float(v) for k, v in x.items() if k.startswith("p_")] for x in a])
    pb = np.array([[float(v) for k, v in x.items() if k.startswith("p_")] for x in b])
    assert np.allclose(pa, pb, atol=1e-6)
    assert json.loads((tmp_path / "cut" / "folds.json").read_text())["pooled"]["accuracy"] == whole.accuracy
    assert json.loads((tmp_path / "cut" / "fold2" / "run.json").read_text())["resumed"] == 1


# ---------------------------------------------------------------------------- bad input: one line, exit 2, nothing written


def test_one_fold_is_a_usage_error_and_writes_nothing(cli, tmp_path):
    data = uneven_folder(tmp_path / "d")
    for k in ("1", "0", "-2"):
        assert_clean_error(cli("train", "--data", data, "--folds", k, "--out", tmp_path / "cv", *FAST), f"folds = {k}", "K >= 2")
    assert_clean_error(cli("train", "--data", data, "--folds", "two", "--out", tmp_path / "cv"), "--folds")
    assert not (tmp_path / "cv").exists()
    with pytest.raises(ConfigError, match="folds = 1 is invalid"):
        cnnlab.cross_validate("seed_cnn", str(data), folds=1, out=tmp_path / "cv")
    assert not (tmp_path / "cv").exists()


def test_more_folds_than_images_in_the_smallest_class_names_it(cli, tmp_path, monkeypatch):
    data = uneven_folder(tmp_path / "d")
    monkeypatch.chdir(tmp_path)  # the default --out (runs/trainN) must not appear either
    r = cli("train", "--data", data, "--folds", "6", *FAST)
    assert_clean_error(r, "class 'triangle' has 5 image(s)", "6 folds", "--folds 5")
    assert not (tmp_path / "runs").exists()
    with pytest.raises(DataError, match="class 'triangle' has 5"):
        cnnlab.cross_validate("seed_cnn", str(data), folds=6, out=tmp_path / "cv", **API_FAST)
    assert not (tmp_path / "cv").exists()


def test_folds_with_resume_nproc_or_an_existing_folder_are_usage_errors(cli, cv_run, tmp_path):
    root, data, _ = cv_run
    before = (root / "folds.json").read_text()
    assert_clean_error(cli("train", "--resume", root, "--folds", "3"), "--folds with --resume")
    assert_clean_error(cli("train", "--resume", tmp_path / "x", "--folds", "3"), "--folds with --resume")
    assert_clean_error(cli("train", "--resume", root / "fold2"), "fold 2 of the cross-validation", f"--resume {root}")
    assert_clean_error(cli("train", "--resume", root), "already completed")
    assert_clean_error(cli("train", "--data", data, "--folds", "3", "--nproc", "2", *FAST), "drop --nproc")
    assert_clean_error(cli("train", "--data", data, "--folds", "3", "--out", root, *FAST), "already holds a cross-validation", "--overwrite")
    assert (root / "folds.json").read_text() == before
    with pytest.raises(ConfigError, match="drop folds"):
        cnnlab.cross_validate(folds=3, resume=root)
