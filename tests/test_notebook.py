"""Notebook use (insight/notebook.py, TrainResult.plot_curves/_repr_html_): a real notebook executed by nbclient in a
kernel whose spec lives in tmp_path, checked against an independent count; plus unit tests of each call."""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ["ant", "bee", "cow"]


def write_noise_npz(path: Path, n_train: int = 150, n_test: int = 60, size: int = 32, seed: int = 0) -> Path:
    """Random pixels with random labels: a model trained one epoch on them makes mistakes in every direction."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n_train + n_test, size, size, 3), dtype=np.uint8)
    y = rng.integers(0, len(CLASSES), size=n_train + n_test)
    np.savez(path, x=x[:n_train], y=y[:n_train], x_test=x[n_train:], y_test=y[n_train:], class_names=np.array(CLASSES))
    return path


def expected_most_confused(y_true: np.ndarray, pred: np.ndarray, names: list[str], min_val: int = 1) -> list[tuple[str, str, int]]:
    """The oracle: scikit-learn's confusion matrix, off-diagonal cells >= min_val, most frequent first, ties in label order."""
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y_true, pred, labels=np.arange(len(names)))
    cells = [(names[t], names[p], int(cm[t, p]), t, p) for t in range(len(names)) for p in range(len(names)) if t != p and cm[t, p] >= min_val]
    cells.sort(key=lambda c: (-c[2], c[3], c[4]))
    return [c[:3] for c in cells]


# ---------------------------------------------------------------- the notebook, executed


def _kernel_env(tmp_path: Path, monkeypatch) -> str:
    """A kernelspec for this interpreter in tmp_path (JUPYTER_PATH), and every Jupyter/IPython folder there too, so
    executing the notebook changes nothing outside tmp_path."""
    name = "cnnlab-test-python"
    spec = tmp_path / "jupyter" / "kernels" / name
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "cnnlab test", "language": "python"}))
    for var, sub in (("JUPYTER_PATH", "jupyter"), ("JUPYTER_DATA_DIR", "jupyter-data"), ("JUPYTER_CONFIG_DIR", "jupyter-config"),
                     ("JUPYTER_RUNTIME_DIR", "jupyter-runtime"), ("IPYTHONDIR", "ipython")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel chooses its inline backend, as in Jupyter
    return name


def _pngs(cell) -> list[bytes]:
    return [base64.b64decode(o["data"]["image/png"]) for o in cell.outputs if "image/png" in o.get("data", {})]


def _json_line(cell) -> object:
    text = "".join(o.get("text", "") for o in cell.outputs if o["output_type"] == "stream" and o.get("name") == "stdout")
    return json.loads(text.strip().splitlines()[-1])


def test_notebook_runs_the_notebook_api(tmp_path, monkeypatch):
    import nbclient
    import nbformat

    import cnnlab

    data = write_noise_npz(tmp_path / "noise.npz")
    run_dir = tmp_path / "runs" / "nb"
    kernel = _kernel_env(tmp_path, monkeypatch)
    sources = {
        "load": f"import json, torch\ntorch.set_num_threads(1)\nimport cnnlab\nds = cnnlab.load_dataset({str(data)!r})\nprint(ds.splits['test'].x.shape)",
        "batch": "cnnlab.show_batch(ds, n=8, seed=0)",
        "augmented": "cnnlab.show_augmented(ds, augment='standard', aug_args={'rotate': 20}, n=8, seed=0)",
        "train": f"run = cnnlab.train('seed_cnn', ds, epochs=1, batch_size=32, seed=0, out={str(run_dir)!r}, quiet=True)",
        "run": "run",
        "curves": "run.plot_curves()",
        "interpret": "interp = cnnlab.interpret(run, ds)\ninterp.plot_top_losses(4)",
        "confusion": "interp.plot_confusion_matrix()",
        "confused": "print(json.dumps({'split': interp.split, 'pairs': interp.most_confused(), 'pairs2': interp.most_confused(min_val=2)}))",
        "backend": "import matplotlib, matplotlib.pyplot as plt\nprint(json.dumps({'backend': matplotlib.get_backend(), 'open': plt.get_fignums()}))",
    }
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in sources.values()]
    client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=300, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    cells = dict(zip(sources, nb.cells))
    for name, cell in cells.items():
        assert not [o for o in cell.outputs if o["output_type"] == "error"], name

    # every plot: exactly one inline PNG (the returned Figure; nothing left open in pyplot to be shown twice)
    for name, min_width in (("batch", 300), ("augmented", 300), ("curves", 600), ("interpret", 300), ("confusion", 250)):
        pngs = _pngs(cells[name])
        assert len(pngs) == 1, (name, len(pngs))
        assert Image.open(io.BytesIO(pngs[0])).size[0] >= min_width, name
    assert _json_line(cells["backend"]) == {"backend": "module://matplotlib_inline.backend_inline", "open": []}

    # the run displays as a readable summary
    html = next(o["data"]["text/html"] for o in cells["run"].outputs if "text/html" in o.get("data", {}))
    for text in ("seed_cnn", "noise.npz", "epochs", "best val accuracy", "test accuracy", "on 60 images", "report.html", str(run_dir)):
        assert text in html, text
    assert (run_dir / "report.html").is_file()

    # most_confused: the same pairs as scikit-learn's count over the saved model's own predictions
    got = _json_line(cells["confused"])
    assert got["split"] == "test"
    test = np.load(data)
    pred = cnnlab.load(run_dir).predict_proba(test["x_test"]).argmax(1)
    want = expected_most_confused(test["y_test"], pred, CLASSES)
    assert len(want) >= 2  # random labels: mistakes in several directions, or the comparison would prove little
    assert [tuple(p) for p in got["pairs"]] == want
    assert [tuple(p) for p in got["pairs2"]] == expected_most_confused(test["y_test"], pred, CLASSES, min_val=2)


# ---------------------------------------------------------------- the calls, unit by unit


@pytest.fixture(scope="module")
def noise_run(tmp_path_factory, one_thread):
    import cnnlab

    base = tmp_path_factory.mktemp("notebook")
    ds = cnnlab.load_dataset(str(write_noise_npz(base / "noise.npz", n_train=120, n_test=45)))
    run = cnnlab.train("seed_cnn", ds, epochs=2, batch_size=32, seed=1, out=base / "run", quiet=True)
    return run, ds


def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_each_plot_returns_a_figure_and_writes_nothing(noise_run, tmp_path, monkeypatch):
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    import cnnlab

    run, ds = noise_run
    monkeypatch.chdir(tmp_path)
    run_files = {p: p.stat().st_mtime_ns for p in _files_under(Path(run.run_dir))}
    interp = cnnlab.interpret(run, ds)
    figs = {"show_batch": cnnlab.show_batch(ds, n=5, seed=3), "show_augmented": cnnlab.show_augmented(ds, augment="strong", seed=3),
            "plot_curves": run.plot_curves(), "plot_top_losses": interp.plot_top_losses(6),
            "plot_confusion_matrix": interp.plot_confusion_matrix()}
    for name, fig in figs.items():
        assert isinstance(fig, Figure), name
        png = fig._repr_png_()  # what Jupyter shows when pyplot never loaded its inline backend
        assert png.startswith(b"\x89PNG") and Image.open(io.BytesIO(png)).size[0] > 200, name
    assert matplotlib.get_backend().lower() == "agg"  # outside a kernel the library draws with Agg
    assert plt.get_fignums() == []  # nothing opened in pyplot, nothing for plt.show() to pop up
    assert _files_under(tmp_path) == set()
    assert {p: p.stat().st_mtime_ns for p in _files_under(Path(run.run_dir))} == run_files
    # what the figures show
    assert len(figs["show_batch"].axes) == 6 and sum(1 for ax in figs["show_batch"].axes if ax.get_images()) == 5  # 3x2 grid
    assert sum(1 for ax in figs["plot_top_losses"].axes if ax.get_images()) == 6
    assert len(figs["plot_curves"].axes) == 2 + (run.history[0].get("lr") is not None)
    cm_texts = [t.get_text() for t in figs["plot_confusion_matrix"].axes[0].texts]
    assert len(cm_texts) == len(CLASSES) ** 2


def test_interpret_most_confused_against_scikit_learn(noise_run):
    import cnnlab

    run, ds = noise_run
    interp = cnnlab.interpret(run, ds)
    assert interp.split == "test" and interp.n == 45
    x = ds.split("test").x
    pred = cnnlab.load(run).predict_proba(x).argmax(1)
    np.testing.assert_array_equal(interp.preds, pred)
    for min_val in (1, 2, 3, 100):
        assert interp.most_confused(min_val=min_val) == expected_most_confused(ds.split("test").y, pred, CLASSES, min_val)
    assert interp.most_confused()  # random labels: there are mistakes to list
    from sklearn.metrics import confusion_matrix

    np.testing.assert_array_equal(interp.confusion_matrix(), confusion_matrix(ds.split("test").y, pred, labels=[0, 1, 2]))
    # the same numbers `cnnlab evaluate` reports for that split
    ev = cnnlab.evaluate(run, ds)
    assert ev["accuracy"] == interp.accuracy and ev["confusion_matrix"] == interp.report["confusion_matrix"]
    top = interp.top_losses(5)
    assert [r["loss"] for r in top] == sorted((r["loss"] for r in top), reverse=True)
    assert top[0]["loss"] == pytest.approx(float(interp.losses.max()))


def test_interpret_takes_run_folder_model_file_split_and_defaults_to_the_runs_data(noise_run):
    import cnnlab

    run, ds = noise_run
    by_result = cnnlab.interpret(run, ds).most_confused()
    assert cnnlab.interpret(run.run_dir).most_confused() == by_result  # data from the run's config
    assert cnnlab.interpret(Path(run.run_dir) / "model.safetensors", ds).most_confused() == by_result
    val = cnnlab.interpret(run, ds, split="val")
    assert val.split == "val" and val.n == len(ds.split("val"))


def test_metrics_most_confused_random_counts_against_scikit_learn():
    from sklearn.metrics import confusion_matrix

    from cnnlab.insight.metrics import most_confused

    rng = np.random.default_rng(7)
    names = [f"c{i}" for i in range(5)]
    y, pred = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    counts = confusion_matrix(y, pred, labels=range(5))
    for min_count in (1, 10, 15):
        got = [(r["true"], r["predicted"], r["count"]) for r in most_confused(counts, names, limit=None, min_count=min_count)]
        assert got == expected_most_confused(y, pred, names, min_count)
    assert len(most_confused(counts, names)) == 10  # `evaluate --json` keeps its first ten


def test_train_result_summary_and_curves(noise_run):
    run, _ = noise_run
    html = run._repr_html_()
    best = max(run.history, key=lambda r: r["val_accuracy"])
    assert run.best_val() == {"accuracy": best["val_accuracy"], "epoch": best["epoch"]}
    for text in ("seed_cnn", "noise.npz", "ant, bee, cow", f"{run.history[-1]['val_accuracy']:.1%}",
                 f"{best['val_accuracy']:.1%} (epoch {best['epoch']})", f"{run.test['accuracy']:.1%} on 45 images", "report.html"):
        assert text in html, text
    assert "<script" not in html


def test_augmented_samples_are_seeded_and_name_mixup_partners(noise_run):
    from cnnlab.insight.notebook import augmented_samples

    _, ds = noise_run
    imgs, titles, preset = augmented_samples(ds, "light", {"vflip": 1.0}, n=4, seed=5)
    assert preset == "light" and imgs.shape == (4, 32, 32, 3) and all(t in CLASSES for t in titles)
    x, y = ds.split("train").x, ds.split("train").y
    picked = np.random.default_rng(5).choice(len(x), size=4, replace=False)  # the images `cnnlab show --seed 5` picks
    assert titles == [CLASSES[int(v)] for v in y[picked]]
    assert not np.array_equal(imgs, x[picked])  # flipped (vflip always on)
    again, _, _ = augmented_samples(ds, "light", {"vflip": 1.0}, n=4, seed=5)
    np.testing.assert_array_equal(imgs, again)
    _, mixed, preset = augmented_samples(ds, "strong", {"mixup": 1.0, "cutmix": 0.0}, n=4, seed=5)
    assert preset == "strong" and all("\n+ " in t and t.split("\n+ ")[1].split(" ")[0] in CLASSES for t in mixed)
    _, _, auto = augmented_samples(ds, n=2, seed=5)
    assert auto == "light"  # auto: what the default recipe trains from scratch with (32 px: light)


@pytest.mark.parametrize("call, message", [
    (lambda c, run, ds: c.show_batch(ds, n=0), "n = 0"),
    (lambda c, run, ds: c.show_batch(ds, split="holdout"), "no 'holdout' split"),
    (lambda c, run, ds: c.show_batch("noise.npz"), "cnnlab.load_dataset"),
    (lambda c, run, ds: c.show_augmented(ds, augment="wild"), "unknown augmentation 'wild'"),
    (lambda c, run, ds: c.show_augmented(ds, aug_args={"spin": 1}), "unknown augmentation op 'spin'"),
    (lambda c, run, ds: c.show_augmented(ds, train_size=4), "train_size = 4"),
    (lambda c, run, ds: c.interpret(run, ds).plot_top_losses(0), "k = 0"),
    (lambda c, run, ds: c.interpret(run, ds, split="holdout"), "no 'holdout' split"),
])
def test_bad_input_is_one_clear_error(noise_run, call, message):
    import cnnlab
    from cnnlab.errors import CnnlabError

    run, ds = noise_run
    with pytest.raises(CnnlabError) as e:
        call(cnnlab, run, ds)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_interpret_refuses_data_with_other_classes(noise_run, tmp_path):
    import cnnlab
    from cnnlab.errors import DataError

    run, _ = noise_run
    other = tmp_path / "other.npz"
    rng = np.random.default_rng(0)
    np.savez(other, x=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), y=rng.integers(0, 2, 20), class_names=np.array(["a", "b"]))
    with pytest.raises(DataError, match="differ from the model"):
        cnnlab.interpret(run, str(other))
