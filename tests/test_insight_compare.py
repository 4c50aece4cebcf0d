"""`cnnlab compare`: differing config keys, final metrics, overlaid curves, dataset warning, bad folders."""

from __future__ import annotations

import json
import shutil

import yaml

from test_errors import assert_clean_error


def _variant(src, dst, **changes):
    shutil.copytree(src, dst)
    cfg = yaml.safe_load((dst / "config.yaml").read_text())
    cfg.update(changes)
    (dst / "config.yaml").write_text(yaml.safe_dump(cfg))
    return dst


def test_compare_runs(cli, trained_run, tmp_path):
    run, _ = trained_run
    a = _variant(run, tmp_path / "a")
    b = _variant(run, tmp_path / "b", lr=0.01, batch_size=8)
    r = cli("compare", a, b, "--out", tmp_path / "cmp", "--json")
    assert r.code == 0, r
    res = json.loads(r.out)
    assert res["differing_keys"] == ["batch_size", "lr"] and res["warnings"] == [] and r.err == ""
    assert [x["name"] for x in res["runs"]] == ["a", "b"]
    assert res["runs"][1]["config"] == {"batch_size": 8, "lr": 0.01}
    info = json.loads((run / "run.json").read_text())
    assert res["runs"][0]["test_accuracy"] == info["test"]["accuracy"] and res["runs"][0]["epochs"] == 3
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 5000
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert "data:image/png;base64," in page and "batch_size" in page
    text = cli("compare", a, b, "--out", tmp_path / "cmp")
    assert text.code == 0 and "lr" in text.out and "compare.html" in text.out


def test_compare_different_datasets_warns_and_compares(cli, trained_run, tmp_path):
    run, _ = trained_run
    a = _variant(run, tmp_path / "a")
    b = _variant(run, tmp_path / "b", data="builtin:shapes")
    r = cli("compare", a, b, "--out", tmp_path / "cmp")
    assert r.code == 0 and "different datasets" in r.err and "builtin:shapes" in r.err, r


def test_compare_bad_folders(cli, trained_run, tmp_path):
    run, _ = trained_run
    broken = _variant(run, tmp_path / "broken")
    (broken / "metrics.csv").unlink()
    assert_clean_error(cli("compare", run, broken, "--out", tmp_path / "c"), "broken", "metrics.csv")
    assert_clean_error(cli("compare", tmp_path / "nope", "--out", tmp_path / "c"), "not a run folder")


# ---------------------------------------------------------------------------- a series of runs: docs/beyond-the-seed.md's climb


def _metrics(run, rows):
    keys = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
    (run / "metrics.csv").write_text(",".join(keys) + "\n" + "".join(",".join("" if r.get(k) is None else str(r[k]) for k in keys) + "\n"
                                                                     for r in rows))


def _test_accuracy(run, accuracy):
    info = json.loads((run / "run.json").read_text())
    info["test"]["accuracy"] = accuracy
    (run / "run.json").write_text(json.dumps(info))


def _tune_folder(root, trained, rows, objective="val_accuracy", keep=None):
    """A `cnnlab tune --out root` folder: trials.csv as tune/study.py writes it, a run folder per trial in `keep`."""
    (root / "trials").mkdir(parents=True)
    lines = [f"number,state,{objective},epochs_reported,seconds,lr,error,run_dir"]
    for number, state, value in rows:
        run = root / "trials" / f"{number:04d}"
        if keep is None or number in keep:
            _variant(trained, run, lr=0.001 * (number + 1))
        lines.append(f"{number},{state},{'' if value is None else value},3,1.5,{0.001 * (number + 1)},,{run.resolve()}")
    (root / "trials.csv").write_text("\n".join(lines) + "\n")
    return root


def test_compare_a_tune_folder_stands_for_its_best_trial(cli, trained_run, tmp_path):
    run, _ = trained_run
    tune = _tune_folder(tmp_path / "tune", run, [(0, "complete", 0.7), (1, "pruned", 0.95), (2, "complete", 0.8), (3, "complete", 0.8),
                                                 (4, "fail", None)])
    r = cli("compare", run, tune, "--out", tmp_path / "cmp", "--json")
    assert r.code == 0, r
    rows = json.loads(r.out)["runs"]
    # the highest validation accuracy among complete trials; a tie goes to the earlier trial, as Optuna's best_trial does
    assert [x["name"] for x in rows] == [run.name, "tune (best trial 2)"]
    assert rows[1]["path"] == str(tune / "trials" / "0002") and rows[1]["config"]["lr"] == 0.003

    loss = _tune_folder(tmp_path / "by_loss", run, [(0, "complete", 0.4), (1, "complete", 0.2)], objective="val_loss")
    rows = json.loads(cli("compare", loss, "--out", tmp_path / "cmp", "--json").out)["runs"]
    assert [x["name"] for x in rows] == ["by_loss (best trial 1)"]

    # a study whose trial folders live elsewhere (another machine's --out): the folder trials.csv records
    elsewhere = _tune_folder(tmp_path / "elsewhere", run, [(0, "complete", 0.9)])
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(elsewhere / "trials.csv", moved / "trials.csv")
    rows = json.loads(cli("compare", moved, "--out", tmp_path / "cmp", "--json").out)["runs"]
    assert rows[0]["path"] == str((elsewhere / "trials" / "0000").resolve())


def test_compare_a_tune_folder_without_a_complete_trial_is_refused(cli, trained_run, tmp_path):
    run, _ = trained_run
    tune = _tune_folder(tmp_path / "tune", run, [(0, "running", None), (1, "fail", None)])
    assert_clean_error(cli("compare", run, tune, "--out", tmp_path / "c"), "tune", "without a complete trial")
    (tune / "trials.csv").write_text("number,state,val_accuracy\n0,complete,high\n")
    assert_clean_error(cli("compare", tune, "--out", tmp_path / "c"), "trials.csv line 2", "not a number")


def test_compare_the_climb_one_table_and_one_figure(cli, trained_run, tmp_path):
    """Runs as docs/beyond-the-seed.md makes them: different models, sizes and epoch counts, a frozen run, a two-phase
    fine-tune, a run without a validation split; in the order given, with many differing keys."""
    from cnnlab.insight.compare import compare_figure, compare_runs

    run, _ = trained_run
    seed = _variant(run, tmp_path / "seed")
    longer = _variant(run, tmp_path / "longer", augment="standard", epochs=5, image_size=48)
    _metrics(longer, [{"epoch": e, "train_loss": 1 / e, "train_accuracy": 0.5 + e / 20, "lr": 0.001} for e in range(1, 6)])  # no val split
    frozen = _variant(run, tmp_path / "frozen", pretrained=True, freeze=True, freeze_epochs=3, lr=0.0005, batch_size=16, image_size=64)
    finetune = _variant(run, tmp_path / "finetune", pretrained=True, freeze_epochs=1, lr=0.0005, batch_size=16, image_size=64)
    for r, acc in ((seed, 0.6525), (longer, 0.7), (frozen, 0.985), (finetune, 0.99)):
        _test_accuracy(r, acc)
    r = cli("compare", seed, longer, frozen, finetune, "--out", tmp_path / "cmp", "--json")
    assert r.code == 0 and r.err == "", r
    res = json.loads(r.out)
    rows = res["runs"]
    assert [x["name"] for x in rows] == ["seed", "longer", "frozen", "finetune"]  # the order given, not sorted
    assert len(res["differing_keys"]) > 4
    assert [x["epochs"] for x in rows] == [3, 5, 3, 3] and [x["frozen_epochs"] for x in rows] == [0, 0, 3, 1]
    assert rows[1]["best_val_accuracy"] is None and rows[1]["final"]["val_accuracy"] is None
    assert [x["test_accuracy"] for x in rows] == [0.6525, 0.7, 0.985, 0.99]
    assert rows[2]["setup"].startswith("64px · frozen · ") and rows[3]["setup"].startswith("64px · 1 frozen + 2 tuned · ")
    assert "aug standard" in rows[1]["setup"] and "bs 16" in rows[3]["setup"]

    text = cli("compare", seed, longer, frozen, finetune, "--out", tmp_path / "cmp")
    assert text.code == 0 and "setup" in text.out and "3 (1 frozen)" in text.out and "3 (frozen)" in text.out and "65.25%" in text.out
    header = next(ln for ln in text.out.splitlines() if " run " in ln and " model " in ln)
    assert " lr " not in header and " image_size " not in header  # one setup column instead of a column per key
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert "settings that differ" in page and "freeze_epochs" in page

    fig = compare_figure(compare_runs([seed, longer, frozen, finetune]))
    train_loss, val_loss, train_acc, val_acc, climb = fig.axes
    assert climb.get_title() == "held-out (test) accuracy"
    assert sorted(round(b.get_width(), 4) for b in climb.patches) == [0.6525, 0.7, 0.985, 0.99]
    # the fine-tuned run: its frozen epoch dashed, then one solid line from that epoch on; the frozen run dashed throughout
    styles = {(line.get_label(), line.get_linestyle()): list(line.get_xdata()) for line in train_loss.get_lines()}
    assert sorted(list(line.get_xdata()) for line in train_loss.get_lines() if line.get_linestyle() == "--") == [[1], [1, 2, 3]]
    assert styles[("finetune (seed_cnn)", "-")] == [1, 2, 3] and styles[("frozen (seed_cnn)", "--")] == [1, 2, 3]
    assert styles[("longer (seed_cnn)", "-")] == [1, 2, 3, 4, 5]
    val_labels = {line.get_label() for line in val_acc.get_lines()}
    assert "longer (seed_cnn)" not in val_labels and {"seed (seed_cnn)", "frozen (seed_cnn)", "finetune (seed_cnn)"} <= val_labels
    assert any(t.get_text() == "frozen backbone (head only)" for t in fig.legends[0].get_texts())
