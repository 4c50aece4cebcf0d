"""Multi-label classification end to end on generated data: labels tables with a label delimiter or one 0/1 column per
class, training (sigmoid outputs, binary cross-entropy, thresholds), evaluate's metrics against scikit-learn, predict,
explain, export (ONNX) and serve, and the options multi-label data refuses."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
from PIL import Image

from cnnlab import api
from cnnlab.data.sources import load_dataset
from cnnlab.engine import multilabel
from cnnlab.engine.model_file import read_metadata
from cnnlab.engine.optim import train_loss, train_targets
from test_errors import assert_clean_error

CLASSES = ["red", "green", "blue"]
SIZE = 16


def make_table(root: Path, n: int = 72, seed: int = 0, delim: str | None = " ", classes=CLASSES) -> Path:
    """Images with a red square, a green square and/or a blue bar (each present at random, none at all sometimes) and
    a labels table naming them: labels joined by `delim`, or (delim None) one 0/1 column per class."""
    rng = np.random.default_rng(seed)
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        labels = [c for c in classes if rng.random() < 0.45] if i > 1 else [] if i == 0 else list(classes)  # 0: none, 1: all
        img = (np.full((SIZE, SIZE, 3), 40) + rng.integers(0, 20, (SIZE, SIZE, 3))).astype(np.uint8)
        if "red" in labels:
            img[1:7, 1:7] = (230, 30, 30)
        if "green" in labels:
            img[9:15, 1:7] = (30, 230, 30)
        if "blue" in labels:
            img[1:15, 10:14] = (30, 30, 230)
        Image.fromarray(img).save(root / "imgs" / f"im{i:03d}.png")
        rows.append((f"imgs/im{i:03d}.png", labels))
    if delim is None:
        text = "file," + ",".join(classes) + "\n" + "".join(f"{f}," + ",".join("1" if c in lb else "0" for c in classes) + "\n" for f, lb in rows)
    else:
        text = "file,labels\n" + "".join(f"{f},{delim.join(lb)}\n" for f, lb in rows)
    (root / "labels.csv").write_text(text)
    return root / "labels.csv"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """(run folder, labels table) of a 2-epoch seed_cnn run on a space-delimited table, thresholds tuned on val."""
    from cnnlab.cli import main

    base = tmp_path_factory.mktemp("multilabel")
    table = make_table(base / "data")
    run = base / "run"
    code = main(["train", "--data", str(table), "--label-delim", " ", "--model", "seed_cnn", "--image-size", str(SIZE), "--epochs", "2", "--val-split", "0.3",
                 "--tune-thresholds", "--out", str(run), "--quiet", "--no-tensorboard"])
    assert code == 0
    return run, table


def val_scores(run: Path, table: Path):
    """(multi-hot labels, sigmoid probabilities, images) of the run's val split, computed here from the model itself."""
    clf = api.load(run)
    ds = api.dataset_for_model(clf, str(table))
    val = ds.split("val")
    with torch.inference_mode():
        x = torch.from_numpy(val.x).permute(0, 3, 1, 2).float() / 255  # from scratch: 0-1 scaling, no mean/std
        probs = torch.sigmoid(clf.model(x)).numpy().astype(np.float64)
    return np.asarray(val.y), probs, val


# ---------------------------------------------------------------- loading


def test_tables_load_as_multi_hot_labels(tmp_path):
    table = make_table(tmp_path / "a", n=24)
    ds = load_dataset(table, label_delim=" ", image_size=SIZE, val_split=0.25, stream=False)
    assert ds.multi_label and ds.class_names == sorted(CLASSES)
    rows = {r.split(",")[0]: r.split(",")[1].split() for r in table.read_text().splitlines()[1:]}
    for split in ds.splits.values():
        assert split.y.shape == (len(split), 3) and split.y.dtype == np.uint8
        for path, y in zip(split.paths, split.y):
            assert sorted(c for c, v in zip(ds.class_names, y) if v) == sorted(rows["imgs/" + Path(path).name])
    first = None  # (image 0 has no label: an empty cell is a valid row)
    for split in ds.splits.values():
        for path, y in zip(split.paths, split.y):
            if Path(path).name == "im000.png":
                first = y
    assert first is not None and not first.any()
    assert any("drawn at random (multi-label data is not stratified)" in n for n in ds.notes)
    assert ds.class_counts("train") == {c: int(ds.train.y[:, i].sum()) for i, c in enumerate(ds.class_names)}
    # the same images as one 0/1 column per class: classes in header order, same label sets
    onehot = make_table(tmp_path / "b", n=24, delim=None)
    ds2 = load_dataset(onehot, image_size=SIZE, val_split=0, stream=False)
    assert ds2.multi_label and ds2.class_names == CLASSES
    order = [ds.class_names.index(c) for c in CLASSES]
    ds1 = load_dataset(table, label_delim=" ", image_size=SIZE, val_split=0, stream=False)
    assert np.array_equal(ds2.train.y, ds1.train.y[:, order])
    assert any("one 0/1 column per class" in n for n in ds2.notes)


def test_one_hot_columns_with_one_label_per_row_are_single_label(tmp_path):
    (tmp_path / "imgs").mkdir()
    lines = ["file,cat,dog"]
    for i in range(6):
        Image.new("RGB", (SIZE, SIZE), (i * 40, 0, 0)).save(tmp_path / "imgs" / f"{i}.png")
        lines.append(f"imgs/{i}.png,{i % 2},{1 - i % 2}")
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    ds = load_dataset(tmp_path / "t.csv", image_size=SIZE, val_split=0, stream=False)
    assert not ds.multi_label and ds.class_names == ["cat", "dog"]
    assert ds.train.y.tolist() == [1 - i % 2 for i in range(6)]


def test_mixed_and_smoothed_targets_blend_label_vectors():
    y = torch.tensor([[1, 0, 1], [0, 1, 0]])
    y2 = y.flip(0)
    t = train_targets(y, 3, y2, lam=0.7, smoothing=0.1)
    expected = (0.7 * y.float() + 0.3 * y2.float()) * 0.9 + 0.05
    assert torch.allclose(t, expected)
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.3, 1.2, 0.0]])
    ref = torch.nn.BCEWithLogitsLoss()(logits, t)  # every output's BCE, averaged
    assert torch.allclose(train_loss(logits, t, multi_label=True), ref)


# ---------------------------------------------------------------- metrics against scikit-learn


def test_metrics_match_scikit_learn_on_random_scores():
    rng = np.random.default_rng(3)
    y = (rng.random((200, 4)) < 0.3).astype(np.uint8)
    probs = np.round(rng.random((200, 4)) * 0.6 + 0.4 * y, 2)  # rounded: tied scores
    thr = np.array([0.5, 0.3, 0.65, 0.5])
    rep = multilabel.multi_label_report(y, probs, ["a", "b", "c", "d"], thr)
    pred = (probs >= thr).astype(int)
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, zero_division=0)
    for i, row in enumerate(rep["per_class"]):
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
        assert row["average_precision"] == pytest.approx(skm.average_precision_score(y[:, i], probs[:, i]))
    assert rep["micro_avg"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="micro", zero_division=0))
    assert rep["macro_avg"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert rep["map"] == pytest.approx(skm.average_precision_score(y, probs, average="macro"))
    assert rep["exact_match"] == pytest.approx(skm.accuracy_score(y, pred))
    assert rep["accuracy"] == pytest.approx(1 - skm.hamming_loss(y, pred))
    y[:, 3] = 0  # a class without a positive image: AP undefined, left out of mAP
    rep = multilabel.multi_label_report(y, probs, ["a", "b", "c", "d"], thr)
    assert rep["per_class"][3]["average_precision"] is None
    assert rep["map"] == pytest.approx(np.mean([skm.average_precision_score(y[:, i], probs[:, i]) for i in range(3)]))


def test_evaluate_json_matches_scikit_learn_on_a_trained_run(trained, cli):
    run, table = trained
    r = cli("evaluate", run, "--data", table, "--split", "val", "--json")
    assert r.code == 0, r
    res = json.loads(r.out)
    y, probs, val = val_scores(run, table)
    thr = np.asarray(read_metadata(run)["thresholds"])
    assert res["task"] == "multi_label" and res["n"] == len(y) and res["split"] == "val"
    names = [row["class"] for row in res["per_class"]]
    assert names == sorted(CLASSES) and [res["thresholds"][c] for c in names] == pytest.approx(thr)
    pred = (probs >= thr).astype(int)
    p, rc, f, s = skm.precision_recall_fscore_support(y, pred, zero_division=0)
    for i, row in enumerate(res["per_class"]):
        assert (row["precision"], row["recall"], row["f1"], row["support"], row["threshold"]) == pytest.approx((p[i], rc[i], f[i], s[i], thr[i]), abs=1e-6)
        assert row["average_precision"] == pytest.approx(skm.average_precision_score(y[:, i], probs[:, i]), abs=1e-6)
    assert res["micro_avg"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="micro", zero_division=0), abs=1e-6)
    assert res["macro_avg"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0), abs=1e-6)
    assert res["map"] == pytest.approx(skm.average_precision_score(y, probs, average="macro"), abs=1e-6)
    bce = skm.log_loss(y.ravel(), probs.ravel(), labels=[0, 1])  # the mean BCE over every (image, class)
    assert res["loss"] == pytest.approx(bce, abs=1e-4)
    # the tuned thresholds: each class's F1 on val at its threshold is the best any threshold gives
    for i in range(y.shape[1]):
        best = max(skm.f1_score(y[:, i], probs[:, i] >= t, zero_division=0) for t in np.unique(probs[:, i]))
        assert skm.f1_score(y[:, i], probs[:, i] >= thr[i], zero_division=0) == pytest.approx(best)
    r = cli("evaluate", run, "--data", table, "--split", "val", "--plots", run.parent / "plots")
    assert r.code == 0 and "mAP" in r.out and "threshold" in r.out, r
    assert sorted(p.name for p in (run.parent / "plots").iterdir()) == ["per_class.png", "prediction_grid.png", "top_losses.png"]


# ---------------------------------------------------------------- predict, explain, export, serve


def test_predict_explain_and_onnx_export_list_the_labels_above_their_thresholds(trained, cli, tmp_path):
    run, table = trained
    meta = read_metadata(run)
    assert meta["task"] == "multi_label" and meta["threshold_tuning"]["split"] == "val"
    thr = dict(zip(meta["class_names"], meta["thresholds"]))
    images = sorted((table.parent / "imgs").iterdir())[:6]
    r = cli("predict", run, *images, "--json", "--backend", "torch")
    assert r.code == 0, r
    torch_res = json.loads(r.out)
    for res in torch_res:
        above = sorted((c for c, p in res["probabilities"].items() if p >= thr[c]), key=lambda c: -res["probabilities"][c])
        assert [lb["class"] for lb in res["labels"]] == above and res["class"] == " ".join(above)
        assert all(lb["threshold"] == pytest.approx(thr[lb["class"]]) for lb in res["labels"])
    r = cli("export", run, "--format", "onnx")
    assert r.code == 0, r
    side = json.loads((run / "model.onnx.json").read_text())
    assert side["task"] == "multi_label" and side["thresholds"] == pytest.approx(meta["thresholds"])
    assert side["outputs"]["logits"] == ["batch", 3]
    r = cli("predict", run, *images, "--json", "--backend", "onnxruntime")
    assert r.code == 0, r
    for a, b in zip(torch_res, json.loads(r.out)):
        assert [lb["class"] for lb in a["labels"]] == [lb["class"] for lb in b["labels"]]
        assert list(a["probabilities"].values()) == pytest.approx(list(b["probabilities"].values()), abs=1e-4)
    r = cli("explain", run, images[0], "--method", "gradcam", "--out", tmp_path / "ex", "--json")
    assert r.code == 0, r
    recs = json.loads(r.out)
    expected = [lb["class"] for lb in torch_res[0]["labels"]] or [max(torch_res[0]["probabilities"], key=torch_res[0]["probabilities"].get)]
    assert [rec["class"] for rec in recs] == expected
    for rec in recs:
        assert Path(rec["gradcam"]).is_file() and rec["gradcam"].endswith(f"_{rec['class']}_gradcam.png")
        assert rec["probability"] == pytest.approx(torch_res[0]["probabilities"][rec["class"]], abs=1e-5)


def test_serve_answers_every_label_above_its_threshold(trained):
    from test_serve import live_server

    from cnnlab.serve.app import ServeConfig, create_app

    run, table = trained
    meta = read_metadata(run)
    image = sorted((table.parent / "imgs").iterdir())[1]
    clf = api.load(run)
    probs = clf.predict_proba(np.array(clf.load_image(image))[None])[0]
    with live_server(create_app(ServeConfig(model=str(run), backend="torch"))) as url:
        req = urllib.request.Request(url + "/v1/predict", data=image.read_bytes(), headers={"Content-Type": "image/png"})
        pred = json.loads(urllib.request.urlopen(req, timeout=30).read())["predictions"][0]
        info = json.loads(urllib.request.urlopen(url + "/v1/model", timeout=30).read())
    assert info["task"] == "multi_label" and list(info["thresholds"].values()) == pytest.approx(meta["thresholds"])
    want = {c for c, p, t in zip(meta["class_names"], probs, meta["thresholds"]) if p >= t}
    assert {lb["class"] for lb in pred["labels"]} == want
    assert [pred["probabilities"][c] for c in meta["class_names"]] == pytest.approx(probs.tolist(), abs=1e-6)


# ---------------------------------------------------------------- two classes, one 0/1 column per class, mixup


def test_two_classes_get_two_sigmoid_outputs_and_the_best_epoch_by_map(cli, tmp_path, one_thread):
    table = make_table(tmp_path / "d", n=40, delim=None, classes=["red", "blue"])
    run = tmp_path / "run"
    r = cli("train", "--data", table, "--model", "seed_cnn", "--image-size", SIZE, "--epochs", "1", "--aug-arg", "mixup=0.4", "--label-smoothing", "0.1",
            "--out", run, "--quiet", "--no-tensorboard", "--val-split", "0.25")
    assert r.code == 0, r
    clf = api.load(run)
    assert clf.model.fc2.out_features == 2 and clf.multi_label and list(clf.thresholds) == [0.5, 0.5]
    info = json.loads((run / "run.json").read_text())
    rows = info["final"], info["best"]
    assert "val_map" in rows[0] and "map" in rows[1]
    assert info["dataset"]["task"] == "multi_label"
    probs = clf.predict_proba(np.array(clf.load_image(sorted((tmp_path / "d" / "imgs").iterdir())[0]))[None])
    assert probs.shape == (1, 2) and np.all((probs > 0) & (probs < 1))


# ---------------------------------------------------------------- what multi-label data refuses


@pytest.mark.parametrize("flags, needle", [
    (["--balance"], "--balance loss"),
    (["--class-weights", "red=2"], "--class-weights"),
    (["--folds", "3"], "--folds does not take multi-label data"),
    (["--tune-thresholds", "--val-split", "0"], "needs a validation split"),
])
def test_options_that_do_not_apply_are_refused_in_one_line(cli, tmp_path, flags, needle):
    table = make_table(tmp_path / "d", n=12)
    r = cli("train", "--data", table, "--label-delim", " ", "--model", "seed_cnn", "--epochs", "1", "--out", tmp_path / "run",
            "--no-tensorboard", *flags)
    assert_clean_error(r, needle)
    assert not (tmp_path / "run").exists()


def test_tune_refuses_multi_label_data(cli, tmp_path):
    pytest.importorskip("optuna")
    table = make_table(tmp_path / "d", n=12)
    r = cli("tune", "--data", table, "--label-delim", " ", "--trials", "1", "--out", tmp_path / "tune")
    assert_clean_error(r, "does not take multi-label data")


def test_one_label_per_image_data(cli, tmp_path, trained):
    """--tune-thresholds is refused on single-label data; a multi-label model scores such data as one-label sets."""
    table = tmp_path / "d" / "labels.csv"
    make_table(tmp_path / "d", n=12)
    files = [ln.split(",")[0] for ln in table.read_text().splitlines()[1:]]
    table.write_text("file,blue,green,red\n" + "".join(f"{f},{int(i % 3 == 0)},{int(i % 3 == 1)},{int(i % 3 == 2)}\n" for i, f in enumerate(files)))
    r = cli("train", "--data", table, "--model", "seed_cnn", "--epochs", "1", "--out", tmp_path / "run", "--tune-thresholds", "--no-tensorboard")
    assert_clean_error(r, "multi-label data", "drop --tune-thresholds")
    assert not (tmp_path / "run").exists()
    run, _ = trained
    clf = api.load(run)
    ds = api.dataset_for_model(clf, str(table))
    assert not load_dataset(table, val_split=0, image_size=SIZE).multi_label and ds.multi_label
    for split in ds.splits.values():
        for path, y in zip(split.paths, split.y):
            i = files.index("imgs/" + Path(path).name)
            assert y.sum() == 1 and clf.class_names[int(np.argmax(y))] == ["blue", "green", "red"][i % 3]


def test_a_damaged_thresholds_entry_is_one_line(trained, cli, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    run, table = trained
    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["cnnlab"])
    save_file(tensors, str(tmp_path / "m.safetensors"), metadata={"cnnlab": json.dumps({**meta, "thresholds": [2.0, 0.5]})})
    r = cli("predict", tmp_path / "m.safetensors", sorted((table.parent / "imgs").iterdir())[0], "--backend", "torch")
    assert_clean_error(r, "m.safetensors", "thresholds is not a list of 3 numbers in [0, 1]")
    del meta["task"], meta["thresholds"]  # a file without `task` is single-label: its 3 outputs are softmax classes
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={"cnnlab": json.dumps(meta)})
    clf = api.load(tmp_path / "old.safetensors")
    assert not clf.multi_label and clf.thresholds is None
    c, h, w = clf.input_shape
    assert clf.predict_proba(np.zeros((1, h, w, c), np.uint8)).sum() == pytest.approx(1.0, abs=1e-5)


def test_data_check_reads_a_multi_label_table_as_training_would(cli, tmp_path):
    table = make_table(tmp_path, n=12, delim="|")
    (tmp_path / "imgs" / "im003.png").write_bytes(b"not a png")  # one unreadable image: check lists it, exit 2
    r = cli("data", "check", table, "--label-delim", "|", "--json")
    rep = json.loads(r.out)
    assert r.code == 2 and rep["classes"] == sorted(CLASSES) and rep["images"] == 12
    assert [Path(b["path"]).name for b in rep["bad"]] == ["im003.png"]
    r = cli("data", "check", table)  # without --label-delim, as training: an empty cell is an error, and the message says why
    assert r.code == 2 and "is empty on lines 2, 13" in r.err and "--label-delim '|'" in r.err and r.err.count("\n") == 1, r
