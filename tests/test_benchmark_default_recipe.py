"""benchmarks/default_recipe: the held-out split (fixed or one per run) and the table it prints, on tiny data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

import cnnlab
from benchmarks.default_recipe import main, split_folder
from cnnlab.engine.kfold import stratified_folds
from conftest import write_image_folder


def listing(folder: Path) -> dict[str, set[str]]:
    return {part: {f"{c.name}/{f.name}" for c in (folder / part).iterdir() for f in c.iterdir()} for part in ("train", "test")}


def test_split_holds_out_the_asked_number_per_class_and_depends_only_on_its_seed(tmp_path):
    source = write_image_folder(tmp_path / "src", n_per_class=12, size=16)
    counts = split_folder(source, tmp_path / "a", 4, seed=0)
    split_folder(source, tmp_path / "a2", 4, seed=0)
    split_folder(source, tmp_path / "b", 4, seed=1)
    a, a2, b = listing(tmp_path / "a"), listing(tmp_path / "a2"), listing(tmp_path / "b")
    assert counts == {"circle": 12, "square": 12}
    assert not a["train"] & a["test"] and len(a["train"] | a["test"]) == 24
    assert sorted(n.split("/")[0] for n in a["test"]) == ["circle"] * 4 + ["square"] * 4
    assert a == a2 and a["test"] != b["test"]


def test_a_split_per_run_trains_each_seed_on_its_own_split_and_reports_both_accuracies(tmp_path, capsys):
    source = write_image_folder(tmp_path / "src", n_per_class=20, size=24)
    code = main(["--source", str(source), "--seeds", "0,1", "--test-per-class", "5", "--split-seed", "run",
                 "--keep", str(tmp_path / "runs"), "--", "--model", "resnet9", "--epochs", "1", "--image-size", "32"])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and "seed" not in line]
    assert [r[0].strip() for r in rows] == ["0", "1"]
    for r in rows:
        assert 0 <= float(r[2].strip().rstrip("%")) <= 100 and 0 <= float(r[3].strip().rstrip("%")) <= 100
        assert r[4].strip() == "resnet9 32 px, aug light" and r[5].strip() == "1"
    data = [Path(yaml.safe_load((tmp_path / "runs" / f"seed{s}" / "config.yaml").read_text())["data"]).name for s in (0, 1)]
    assert data == ["data0", "data1"]
    assert "held-out accuracy" in out and "validation" in out.rsplit("held-out accuracy", 1)[1]


def test_a_bad_split_seed_is_a_usage_error(tmp_path, capsys):
    assert main(["--source", str(tmp_path), "--split-seed", "each"]) == 2
    assert "--split-seed each" in capsys.readouterr().err


def test_k_folds_hold_out_every_image_exactly_once_with_equal_parts_per_class(tmp_path):
    source = write_image_folder(tmp_path / "src", n_per_class=10, size=16)
    tests = []
    for j in range(3):
        split_folder(source, tmp_path / f"f{j}", 0, seed=7, fold=(j, 3))
        parts = listing(tmp_path / f"f{j}")
        assert not parts["train"] & parts["test"] and len(parts["train"] | parts["test"]) == 20
        per_class = [sum(n.startswith(c) for n in parts["test"]) for c in ("circle/", "square/")]
        assert per_class == [[4, 3], [3, 4], [3, 3]][j]  # 10 = 4 + 3 + 3 per class; the larger part rotates over the folds
        tests.append(parts["test"])
    assert sorted(n for t in tests for n in t) == sorted(listing(tmp_path / "f0")["train"] | tests[0])
    assert sum(len(t) for t in tests) == 20


def test_k_folds_are_the_folds_cnnlab_train_folds_holds_out(tmp_path):
    """One implementation: the benchmark's fold j is fold j+1 of `cnnlab train --data SOURCE --folds K --seed S`
    (engine/kfold.stratified_folds over the folder loaded without a validation split)."""
    source = write_image_folder(tmp_path / "src", n_per_class=11, size=16)
    ds = cnnlab.load_dataset(source, val_split=0.0)
    fold = stratified_folds(ds.train.y, ds.class_names, 4, seed=5)
    for j in range(4):
        split_folder(source, tmp_path / f"f{j}", 0, seed=5, fold=(j, 4))
        library = {"/".join(Path(ds.train.paths[i]).parts[-2:]) for i in np.flatnonzero(fold == j)}
        assert listing(tmp_path / f"f{j}")["test"] == library


def test_folds_run_one_seed_per_fold_and_pool_the_whole_source(tmp_path, capsys):
    source = write_image_folder(tmp_path / "src", n_per_class=8, size=24)
    code = main(["--source", str(source), "--folds", "2", "--keep", str(tmp_path / "runs"),
                 "--", "--model", "resnet9", "--epochs", "1", "--image-size", "32"])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and "seed" not in line]
    accs = [float(r[2].strip().rstrip("%")) for r in rows]
    assert [r[0].strip() for r in rows] == ["0", "1"]
    pooled = float(out.split("pooled accuracy ")[1].split("%")[0])
    assert abs(pooled - sum(accs) / 2) < 0.11 and "of 16 images" in out  # equal folds: the pooled mean is the mean
    assert "per class (precision/recall): circle " in out and ", square " in out  # the library's pooled report


def test_folds_need_one_seed_per_fold(tmp_path, capsys):
    assert main(["--source", str(tmp_path), "--folds", "3", "--seeds", "0,1"]) == 2
    assert "--folds 3" in capsys.readouterr().err
    assert main(["--source", str(tmp_path), "--folds", "1"]) == 2


def test_few_shot_trains_on_n_per_class_and_keeps_the_held_out_part(tmp_path):
    source = write_image_folder(tmp_path / "src", n_per_class=10, size=16)
    split_folder(source, tmp_path / "all", 0, seed=3, fold=(1, 5))
    split_folder(source, tmp_path / "few", 0, seed=3, fold=(1, 5), train_per_class=3)
    full, few = listing(tmp_path / "all"), listing(tmp_path / "few")
    assert few["test"] == full["test"] and few["train"] < full["train"]
    assert sorted(n.split("/")[0] for n in few["train"]) == ["circle"] * 3 + ["square"] * 3
