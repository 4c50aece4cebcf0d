"""Each option is declared once: the `train` flags come from TrainConfig's fields, the data flags of every command
from DataOptions; unset flags stay unset so a --config file keeps its values."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from cnnlab.cli import build_parser
from cnnlab.cli._common import cli_fields, data_options
from cnnlab.cli.train import config_from_args
from cnnlab.config import DataOptions, TrainConfig, config_from_dict

# (the command, its required arguments)
DATA_COMMANDS = ((("train",), ()), (("evaluate",), ("RUN",)), (("predict",), ("RUN",)), (("show",), ()),
                 (("data", "convert"), ("SRC", "OUT", "--to", "csv")), (("tune",), ()), (("lr-find",), ()))


def _subparser(*names: str) -> argparse.ArgumentParser:
    p = build_parser()
    for name in names:
        p = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return p


def _flags(*names: str) -> dict[str, argparse.Action]:
    return {a.dest: a for a in _subparser(*names)._actions}


def test_every_train_option_is_a_flag_with_the_fields_name_and_choices():
    actions = _flags("train")
    for f in dataclasses.fields(TrainConfig):
        if not f.metadata.get("cli"):
            assert f.name not in actions
            continue
        a = actions[f.name]
        assert a.default is argparse.SUPPRESS, f.name  # unset: the config file's value (or the field default) stays
        assert a.option_strings[0] == f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        assert a.choices == f.metadata.get("choices") and a.help == f.metadata.get("help")
    assert actions["augment"].option_strings == ["--aug"] and actions["model_args"].option_strings == ["--model-arg"]
    assert actions["pretrained"].option_strings == ["--pretrained", "--no-pretrained"]
    assert actions["ema"].option_strings == ["--ema"] and actions["deterministic"].option_strings == ["--deterministic"]


def test_parsed_flags_set_only_what_was_given():
    args = build_parser().parse_args(["train", "--data", "d", "--aug", "light", "--no-tta", "--ema", "--image-shape", "32x32x3",
                                      "--classes", "cat,dog", "--model-arg", "width=8", "--model-arg", "drop=0.1"])
    given = {k: v for k, v in vars(args).items() if k in cli_fields(TrainConfig)}
    assert given == {"data": "d", "augment": "light", "tta": False, "ema": True, "image_shape": [32, 32, 3], "classes": ["cat", "dog"],
                     "model_args": [("width", 8), ("drop", 0.1)]}


def test_config_file_values_survive_unless_a_flag_overrides_them(tmp_path):
    cfg = TrainConfig(data="builtin:shapes", model="resnet9", ema=True, augment="strong", tta=False, val_split=0.2,
                      model_args={"width": 8}, aug_args={"rotate": 5})
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "c.yaml"), "--epochs", "3", "--model-arg", "depth=2",
                                      "--aug-arg", "rotate=15"])
    out = config_from_args(args)
    assert out == dataclasses.replace(cfg, epochs=3, model_args={"width": 8, "depth": 2}, aug_args={"rotate": 15})


def test_config_yaml_keeps_its_key_order_and_round_trips():
    cfg = TrainConfig(data="x", classes=["a", "b"], image_shape=[8, 8, 1])
    keys = list(cfg.to_dict())
    # as earlier runs wrote them: the data options where they were, not first (keys added since then come last)
    assert keys[:3] == ["data", "model", "model_args"] and keys[keys.index("test_scale") + 1] == "image_size"
    assert keys[keys.index("deterministic") + 1:][:3] == ["max_bad_fraction", "stream", "workers"]
    assert set(keys) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("command, required", DATA_COMMANDS, ids=lambda a: " ".join(a))
def test_every_data_command_takes_every_data_option(command, required):
    actions = _flags(*command)
    for name in cli_fields(DataOptions):
        assert name in actions, f"{' '.join(command)} lacks --{name}"
    ns = build_parser().parse_args([*command, *required, "--val-split", "0.3", "--no-stream", "--classes", "a,b"])
    assert data_options(ns).load_kwargs() == {"val_split": 0.3, "stream": False, "classes": ["a", "b"]}


def test_classes_are_parsed_the_same_everywhere(cli):
    errors = [cli(*command, *required, "--classes", "cat").err for command, required in DATA_COMMANDS]
    errors.append(cli("data", "check", "d", "--classes", "cat").err)
    assert all("'cat' needs at least two comma-separated class names" in e for e in errors), errors


def test_tta_is_the_same_kind_of_flag_on_train_evaluate_and_predict():
    for cmd in ("train", "evaluate", "predict"):
        assert _flags(cmd)["tta"].option_strings == ["--tta", "--no-tta"], cmd
    assert build_parser().parse_args(["evaluate", "RUN", "--no-tta"]).tta is False
    assert build_parser().parse_args(["predict", "RUN", "x.png"]).tta is False


def test_show_takes_trains_augmentation_flags_and_defaults_to_the_recipes_choice(cli, monkeypatch):
    from cnnlab.insight import plots

    assert _flags("show")["augment"].choices == _flags("train")["augment"].choices
    shown = []
    monkeypatch.setattr(plots, "save_grid", lambda x, titles, path, suptitle="": shown.append(suptitle) or path)
    assert cli("show", "--data", "builtin:shapes", "--augmented", "--grid", "2").code == 0  # 64 px colour
    assert cli("show", "--data", "builtin:shapes", "--image-size", "40", "--augmented", "--grid", "2").code == 0
    assert cli("show", "--data", "builtin:shapes", "--augmented", "--aug", "strong", "--grid", "2").code == 0
    assert shown == ["augmented (standard)", "augmented (light)", "augmented (strong)"]


def test_the_ranks_command_line_pins_the_default_recipes_choice():
    """`train --nproc N` with the default recipe: the plan's choices, passed as flags, give every rank the same config."""
    from cnnlab.engine.launcher import recipe_flags

    planned = TrainConfig(data="d", model="efficientnet_lite0", augment="none", batch_size=32, image_size=160, pretrained=True,
                          freeze=True, tta=False)
    args = build_parser().parse_args(["train", "--data", "d", *recipe_flags(planned)])
    assert config_from_args(args) == dataclasses.replace(TrainConfig(data="d"), **{k: getattr(planned, k) for k in (
        "model", "augment", "batch_size", "image_size", "pretrained", "freeze", "tta")})


def test_nproc_starts_ranks_only_in_the_users_process(monkeypatch):
    from cnnlab.engine import launcher
    from cnnlab.engine.distributed import LAUNCHER_ENV
    from cnnlab.errors import ConfigError

    monkeypatch.delenv(LAUNCHER_ENV, raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launcher.starts_ranks(2) and not launcher.starts_ranks(1)
    monkeypatch.setenv(LAUNCHER_ENV, "123")  # inside a rank: the same command line, --nproc included
    assert not launcher.starts_ranks(2)
    monkeypatch.delenv(LAUNCHER_ENV)
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun
    with pytest.raises(ConfigError, match="under torchrun leave it out"):
        launcher.starts_ranks(2)
    with pytest.raises(ConfigError, match="under torchrun pass --model"):
        launcher.check_torchrun_config(TrainConfig(data="d"))
