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
