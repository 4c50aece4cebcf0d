"""`cnnlab tune`: search space parsing, study storage, failed trials and outputs (tiny data, 1-epoch trials)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from test_errors import assert_clean_error

pytest.importorskip("optuna")

from cnnlab.config import TrainConfig  # noqa: E402
from cnnlab.errors import ConfigError  # noqa: E402
from cnnlab.tune import space as sp  # noqa: E402

DATA = "builtin:shapes?n=200&size=32"


def write_space(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


SMALL_SPACE = """
model: seed_cnn
width: {choices: [8, 16]}
lr: {low: 1.0e-3, high: 1.0e-2, log: true}
batch_size: {choices: [32, 64]}
"""


# ---------------------------------------------------------------- space (no training)


def test_default_space_drops_epochs_when_training_length_is_fixed():
    assert "epochs" in sp.default_space()
    assert "epochs" not in sp.default_space({"time_budget": 30.0})
    assert "epochs" not in sp.default_space({"epochs": 2}) and "lr" in sp.default_space({"epochs": 2})
    assert "width" not in sp.default_space({"model": "mobilenetv2"}) and "width" in sp.default_space({"model": "resnet9"})


def test_width_maps_to_each_models_own_argument():
    import optuna

    space = sp.parse_space({"model": {"choices": ["seed_cnn", "resnet9"]}, "width": {"choices": [16]}}, "t")
    base = TrainConfig(data="x")
    seed = sp.apply(sp.sample(space, optuna.trial.FixedTrial({"model": "seed_cnn", "width": 16})), base, "t")
    res = sp.apply(sp.sample(space, optuna.trial.FixedTrial({"model": "resnet9", "width": 16})), base, "t")
    assert seed.model_args == {"filters": 16} and res.model_args == {"width": 16}


def test_space_types_follow_trainconfig_fields():
    import optuna

    space = sp.parse_space({"epochs": {"low": 1, "high": 3}, "weight_decay": {"low": 0, "high": 1}, "aug_args.rotate": {"low": 0, "high": 20}}, "t")
    cfg = sp.apply(sp.sample(space, optuna.trial.FixedTrial({"epochs": 2, "weight_decay": 0.5, "aug_args.rotate": 10})), TrainConfig(data="x"), "t")
    assert cfg.epochs == 2 and cfg.weight_decay == 0.5 and cfg.aug_args == {"rotate": 10}


@pytest.mark.parametrize("text, needle", [
    ("learning_rate: {low: 0.1, high: 1}", "unknown parameter 'learning_rate'"),
    ("lr: {low: 0.1, high: 0.01}", "empty range"),
    ("lr: {low: 0.1, high: 0.1}", "empty range"),
    ("batch_size: {choices: []}", "empty choices"),
    ("image_size: {choices: [32, 64]}", "'image_size' cannot be tuned"),
    ("lr: {low: 0, high: 0.1, log: true}", "log range needs low > 0"),
    ("augment: {choices: [none, extreme]}", "augment value 'extreme' is invalid"),
    ("epochs: {low: 1.5, high: 3}", "whole-number"),
    ("lr: {low: 0.001}", "needs both low and high"),
    ("lr: {min: 0.001, max: 0.1}", "unknown field"),
    ("[1, 2]", "expected a mapping"),
    ("{}", "non-empty mapping"),
])
def test_space_file_errors_exit_2(cli, tmp_path, text, needle):
    path = write_space(tmp_path / "space.yaml", text)
    r = cli(*["tune", "--data", DATA, "--trials", "1", "--space", path, "--out", str(tmp_path / "t")])
    assert_clean_error(r, "space.yaml", needle)


def test_space_model_argument_checked_before_any_trial(tmp_path):
    with pytest.raises(ConfigError, match="has no argument 'depth'"):
        sp.check_models(sp.parse_space({"model": "seed_cnn", "model_args.depth": {"choices": [2, 3]}}, "t"), TrainConfig(data="x"))
    with pytest.raises(ConfigError, match="no width argument"):
        sp.check_models(sp.parse_space({"model": "mobilenetv2", "width": {"choices": [8]}}, "t"), TrainConfig(data="x"))


def test_unreachable_storage_is_a_clean_error_and_hides_the_password(cli, tmp_path):
    r = cli(*["tune", "--data", DATA, "--trials", "1", "--storage", "postgresql://me:s3cret@127.0.0.1:9/nodb", "--out", str(tmp_path / "t")])
    assert_clean_error(r, "cannot open the study database", "me:***@127.0.0.1:9")
    assert "s3cret" not in r.err
    r = cli(*["tune", "--data", DATA, "--trials", "1", "--storage", "not a url", "--out", str(tmp_path / "t")])
    assert_clean_error(r, "is not a database URL")


def test_trials_or_timeout_required(cli, tmp_path):
    assert_clean_error(cli(*["tune", "--data", DATA, "--out", str(tmp_path / "t")]), "--trials N")


# ---------------------------------------------------------------- studies (real training, 1 epoch per trial)


def test_tune_writes_outputs_resumes_and_best_config_trains(cli, tmp_path):
    space = write_space(tmp_path / "space.yaml", SMALL_SPACE)
    out = tmp_path / "tune"
    r = cli(*["tune", "--data", DATA, "--trials", "2", "--epochs", "1", "--space", space, "--pruner", "none", "--out", str(out), "--sampler-seed", "1"])
    assert r.code == 0, r
    for name in ("trials.csv", "best_config.yaml", "history.png", "parallel.png", "study.db"):
        assert (out / name).is_file(), name
    table = rows(out / "trials.csv")
    assert [t["number"] for t in table] == ["0", "1"] and {t["state"] for t in table} == {"complete"}
    assert 0.0 <= float(table[0]["val_accuracy"]) <= 1.0 and table[0]["width"] in ("8", "16")

    # the same study name again without --resume: a clash, nothing runs
    again = cli(*["tune", "--data", DATA, "--trials", "1", "--epochs", "1", "--space", space, "--pruner", "none", "--out", str(out)])
    assert_clean_error(again, "already exists", "--resume")
    assert len(rows(out / "trials.csv")) == 2
    missing = cli(*["tune", "--data", DATA, "--trials", "1", "--study", "other", "--resume", "--out", str(out)])
    assert_clean_error(missing, "no study named 'other'", "cnnlab")
    other_objective = cli("tune", "--data", DATA, "--trials", "1", "--resume", "--objective", "val_loss", "--out", str(out))
    assert_clean_error(other_objective, "optimises val_accuracy", "--objective val_accuracy")

    r = cli(*["tune", "--data", DATA, "--trials", "1", "--epochs", "1", "--space", space, "--pruner", "none", "--out", str(out), "--resume", "--json"])
    assert r.code == 0, r
    import json

    res = json.loads(r.out)
    assert res["ran"] == 1 and res["counts"] == {"complete": 3}
    assert len(rows(out / "trials.csv")) == 3

    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["model"] == "seed_cnn" and best["epochs"] == 1 and best["model_args"]["filters"] in (8, 16)
    assert best["lr"] == pytest.approx(res["best"]["params"]["lr"])
    run = tmp_path / "best_run"
    r = cli(*["train", "--config", str(out / "best_config.yaml"), "--out", str(run), "--quiet"])
    assert r.code == 0, r
    trained = yaml.safe_load((run / "config.yaml").read_text())
    assert trained["lr"] == pytest.approx(best["lr"]) and trained["model_args"] == best["model_args"]


def test_failed_trials_are_recorded_with_reason_and_the_study_goes_on(cli, tmp_path):
    out = tmp_path / "tune"
    bad = write_space(tmp_path / "bad.yaml", "model: seed_cnn\nwidth: 8\nlr: 1.0e+30\n")
    r = cli(*["tune", "--data", DATA, "--trials", "2", "--epochs", "1", "--space", bad, "--out", str(out)])
    assert_clean_error(r, "no trial of study 'cnnlab' completed", code=1)
    table = rows(out / "trials.csv")
    assert [t["state"] for t in table] == ["fail", "fail"]  # the second trial ran after the first failed
    assert all("loss became nan" in t["error"] for t in table)
    assert not (out / "best_config.yaml").exists()
    # the study continues with a sane space: the failures stay recorded, a later trial completes
    good = write_space(tmp_path / "good.yaml", "model: seed_cnn\nwidth: 8\nlr: 0.003\n")
    r = cli(*["tune", "--data", DATA, "--trials", "1", "--epochs", "1", "--space", good, "--out", str(out), "--resume"])
    assert r.code == 0, r
    assert [t["state"] for t in rows(out / "trials.csv")] == ["fail", "fail", "complete"]
    assert yaml.safe_load((out / "best_config.yaml").read_text())["lr"] == 0.003


def test_ctrl_c_stops_the_study_cleanly_and_keeps_the_interrupted_trial_on_record(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "tune"
    space = write_space(tmp_path / "space.yaml", "model: seed_cnn\nwidth: 8\nlr: 0.003\n")
    p = subprocess.Popen([sys.executable, "-m", "cnnlab", "tune", "--data", DATA, "--trials", "3", "--epochs", "200", "--space", space,
                          "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "trials" / "0000" / "metrics.csv"
    deadline = time.monotonic() + 180
    while not metrics.exists():  # the first epoch of trial 0 is done: training (and its signal handling) is running
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "trial 0 never finished an epoch"
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err
    table = rows(out / "trials.csv")
    assert [t["state"] for t in table] == ["fail"] and "training interrupted" in table[0]["error"]
# ---------------------------------------------------------------- per-epoch callback and pruning


def test_on_epoch_end_sees_each_epoch_and_stop_training_leaves_a_resumable_run(tmp_path):
    from cnnlab import api
    from cnnlab.engine.run_dir import read_run_json
    from cnnlab.engine.trainer import StopTraining

    seen = []

    def stop_after_first(row):
        seen.append(row)
        raise StopTraining("enough")

    run = tmp_path / "run"
    with pytest.raises(StopTraining):
        api.train("seed_cnn", DATA, epochs=2, out=run, quiet=True, model_args={"filters": 8}, on_epoch_end=stop_after_first)
    assert [r["epoch"] for r in seen] == [1] and 0.0 <= seen[0]["val_accuracy"] <= 1.0
    assert read_run_json(run)["status"] == "stopped" and (run / "last.ckpt").is_file()
    assert not (run / "model.safetensors").exists()
    resumed = api.train(resume=run, quiet=True, on_epoch_end=seen.append)  # the stopped run continues at epoch 2
    assert [r["epoch"] for r in resumed.history] == [1, 2] and [r["epoch"] for r in seen] == [1, 2]


def test_median_pruner_stops_a_poor_trial_after_one_epoch(cli, tmp_path):
    out = tmp_path / "tune"
    common = ["tune", "--data", "builtin:digits?size=28", "--objective", "val_loss", "--set", "precision=fp32", "--out", str(out)]
    good = write_space(tmp_path / "good.yaml", "model: seed_cnn\nwidth: 8\nbatch_size: 32\nlr: 0.003\nepochs: 1\n")
    assert cli(*common, "--trials", "2", "--space", good).code == 0
    # same init and data order; a learning rate too small to move the loss is worse than the median at epoch 1
    # (digits: 25 steps per epoch, enough for lr 0.003 to lower the loss clearly)
    slow = write_space(tmp_path / "slow.yaml", "model: seed_cnn\nwidth: 8\nbatch_size: 32\nlr: 1.0e-7\nepochs: 3\n")
    r = cli(*common, "--trials", "1", "--space", slow, "--resume")
    assert r.code == 0, r
    assert "trial 2: pruned after epoch 1" in r.out
    table = rows(out / "trials.csv")
    assert [t["state"] for t in table] == ["complete", "complete", "pruned"]
    assert table[2]["epochs_reported"] == "1"
    assert yaml.safe_load((out / "best_config.yaml").read_text())["lr"] == 0.003
