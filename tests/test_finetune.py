"""Fine-tuning a pretrained backbone end to end: the frozen phase keeps the backbone exact, unfreezing trains it
at a fraction of the head's LR, resume is bit-identical, the default recipe picks a backbone by the budget, and
everything downstream (evaluate, predict, explain, summary, ONNX, serve) applies the weights' normalisation.

These runs use the EfficientNet-Lite0 ImageNet weights the install ships, on tiny generated images."""

from __future__ import annotations

import json
import signal

import httpx
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from cnnlab.config import TrainConfig
from cnnlab.engine import auto, finetune, trainer
from cnnlab.engine.predictor import Classifier
from cnnlab.models import create_model
from cnnlab.models import pretrained as pt
from conftest import main, write_image_folder, write_seed_csv

pytestmark = pytest.mark.usefixtures("one_thread")
LITE0 = ("--model", "efficientnet_lite0", "--pretrained", "--image-size", "32", "--batch-size", "16", "--quiet")
TF_LITE = {"scale": 1 / 255, "mean": [127 / 255] * 3, "std": [128 / 255] * 3}


def is_tf_lite(norm: dict) -> bool:
    return all(norm[k] == pytest.approx(v) for k, v in TF_LITE.items())


def package_weights() -> dict[str, torch.Tensor]:
    path, _, _ = pt.locate(pt.CATALOGUE["efficientnet_lite0.in1k"], allow_download=False)
    return pt.read_state_dict(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("ft") / "pets", n_per_class=24, size=40)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """One pretrained run: 1 frozen epoch, then 1 unfrozen."""
    out = tmp_path_factory.mktemp("ftrun") / "run"
    assert main(["train", "--data", str(data), *LITE0, "--epochs", "2", "--freeze-epochs", "1", "--out", str(out)]) == 0
    return out


def test_the_frozen_phase_leaves_every_backbone_tensor_exactly_as_loaded(cli, data, tmp_path):
    r = cli("train", "--data", data, *LITE0, "--freeze", "--epochs", "3", "--out", tmp_path / "frozen")
    assert r.code == 0, r
    got, ref = load_file(tmp_path / "frozen" / "model.safetensors"), package_weights()
    backbone = [k for k in ref if not k.startswith("_fc.")]
    assert len(backbone) == len(ref) - 2
    assert all(torch.equal(got[k], ref[k]) for k in backbone)  # weights and BatchNorm statistics alike
    assert got["_fc.weight"].shape == (1, 1280) and got["_fc.weight"].abs().sum() > 0
    rows = (tmp_path / "frozen" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4  # header + 3 frozen epochs
    meta = json.loads(__import__("safetensors").safe_open(str(tmp_path / "frozen" / "model.safetensors"), "pt").metadata()["cnnlab"])
    assert is_tf_lite(meta["normalization"]) and meta["pretrained"]["weights"] == "efficientnet_lite0.in1k"
    assert meta["pretrained"]["sha256"] == pt.CATALOGUE["efficientnet_lite0.in1k"].sha256


def test_unfreezing_trains_the_backbone_at_a_fraction_of_the_head_lr(run):
    got, ref = load_file(run / "model.safetensors"), package_weights()
    changed = [k for k in ref if not k.startswith("_fc.") and k.endswith(".weight") and not torch.equal(got[k], ref[k])]
    assert len(changed) > 50  # the unfrozen epoch moved the backbone
    # ... but not its stem and the blocks at 1/2 and 1/4 resolution (freeze_early, the default): weights and BN statistics
    early = [k for k in ref if k.startswith(("_conv_stem.", "_bn0.", "_blocks.0.", "_blocks.1.", "_blocks.2."))]
    assert len(early) > 20 and all(torch.equal(got[k], ref[k]) for k in early)
    assert not any(k.startswith("_blocks.2.") for k in changed) and any(k.startswith("_blocks.3.") for k in changed)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert (cfg["pretrained"], cfg["freeze_epochs"], cfg["epochs"], cfg["backbone_lr"]) == (True, 1, 2, 0.1)
    model = create_model("efficientnet_lite0", 2, 3, 32)
    model.cnnlab_pretrained = {"weights": "x"}
    opt = trainer.build_optimizer(model, TrainConfig(data="x", model="efficientnet_lite0", pretrained=True, backbone_lr=0.05))
    head = {id(p) for p in model._fc.parameters()}
    for group in opt.param_groups:
        kinds = {id(p) in head for p in group["params"]}
        assert len(kinds) == 1 and group["lr_scale"] == (1.0 if kinds == {True} else 0.05)


def test_no_freeze_early_trains_every_layer(cli, data, tmp_path):
    r = cli("train", "--data", data, *LITE0, "--epochs", "2", "--freeze-epochs", "1", "--no-freeze-early", "--out", tmp_path / "all")
    assert r.code == 0, r
    got, ref = load_file(tmp_path / "all" / "model.safetensors"), package_weights()
    assert not torch.equal(got["_conv_stem.weight"], ref["_conv_stem.weight"])
    assert not torch.equal(got["_bn0.running_mean"], ref["_bn0.running_mean"])


def test_cached_features_are_the_backbones_pooled_features_in_eval_mode(data):
    ds = __import__("cnnlab").load_dataset(str(data), image_size=32)
    model = create_model("efficientnet_lite0", 2, 3, 32)
    pt.load_pretrained(model)
    model.train()
    f, y = finetune.pooled_features(model, ds.train, dict(TF_LITE), torch.device("cpu"), "fp32", batch_size=5)
    x = torch.from_numpy(ds.train.x[:7].copy()).permute(0, 3, 1, 2).float().div(255).sub(127 / 255).div(128 / 255)
    model.eval()
    with torch.no_grad():
        want = model.forward_features(x).mean((2, 3))
    assert torch.allclose(f[:7], want, atol=1e-4) and torch.equal(y, torch.from_numpy(ds.train.y))
    assert f.shape == (len(ds.train), 1280)
    assert not f.is_inference() and not y.is_inference()  # the head's L-BFGS fit differentiates through them


def test_a_multi_class_frozen_phase_fits_a_softmax_head(cli, tmp_path):
    r = cli("train", "--data", "builtin:shapes?classes=6&n=240&size=32", "--model", "efficientnet_lite0", "--pretrained", "--freeze",
            "--epochs", "2", "--out", tmp_path / "six", "--quiet")
    assert r.code == 0, r
    assert load_file(tmp_path / "six" / "model.safetensors")["_fc.weight"].shape == (6, 1280)


def test_resume_of_a_fine_tuning_run_is_bit_identical(cli, data, tmp_path, monkeypatch):
    args = ("train", "--data", data, *LITE0, "--epochs", "3", "--freeze-epochs", "1", "--deterministic", "--precision", "fp32")
    assert cli(*args, "--out", tmp_path / "full").code == 0
    calls, real = [], trainer.batch_generator

    def interrupt_in_epoch_3(*a):  # only unfrozen epochs augment batches: call 4 is epoch 3's first batch
        calls.append(a)
        if len(calls) == 4:
            signal.raise_signal(signal.SIGINT)
        return real(*a)

    monkeypatch.setattr(trainer, "batch_generator", interrupt_in_epoch_3)
    r = cli(*args, "--out", tmp_path / "cut")
    assert r.code == 130 and "--resume" in r.err, r
    assert torch.load(tmp_path / "cut" / "last.ckpt", weights_only=True)["epoch"] == 3
    monkeypatch.setattr(trainer, "batch_generator", real)
    assert cli("train", "--resume", tmp_path / "cut", "--quiet").code == 0
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_interrupt_during_feature_extraction_says_there_is_nothing_to_resume(cli, data, tmp_path, monkeypatch):
    real = finetune.pooled_features

    def interrupted(*a, **k):
        signal.raise_signal(signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(finetune, "pooled_features", interrupted)
    r = cli("train", "--data", data, *LITE0, "--freeze", "--epochs", "2", "--out", tmp_path / "x")
    assert r.code == 130 and "before the first checkpoint" in r.err and "start the run again" in r.err, r


@pytest.mark.parametrize("args, message", [
    (("--model", "efficientnet_lite0", "--pretrained", "--epochs", "2", "--freeze-epochs", "3"), "freeze_epochs = 3 is larger than epochs = 2"),
    (("--model", "resnet9", "--pretrained", "--epochs", "1"), "has no pretrained weights — models with weights: efficientnet_lite0"),
    (("--model", "resnet9", "--freeze", "--epochs", "1"), "need a pretrained model"),
    (("--model", "efficientnet_lite0", "--weights", "missing.pth", "--epochs", "1"), "no such file or catalogued weights"),
    (("--model", "efficientnet_lite0", "--weights", "tv_resnet18.tv_in1k", "--epochs", "1"), "are for tv_resnet18"),
    (("--no-pretrained", "--weights", "efficientnet_lite0.in1k", "--epochs", "1"), "with pretrained = false"),
])
def test_bad_fine_tuning_options_are_one_line_errors(cli, data, tmp_path, args, message):
    r = cli("train", "--data", data, "--image-size", "32", *args, "--out", tmp_path / "bad")
    assert r.code == 2 and message in r.err and r.err.count("\n") == 1, r
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_everything_downstream_applies_the_normalisation(run, data, cli, tmp_path):
    clf = Classifier.load(run)
    assert is_tf_lite(clf.meta["normalization"])
    r = cli("evaluate", run, "--data", data, "--tta", "--plots", tmp_path / "plots", "--json")
    assert r.code == 0, r
    assert 0 <= json.loads(r.out)["accuracy"] <= 1 and (tmp_path / "plots").is_dir()
    img = next((data / "circle").iterdir())
    r = cli("predict", run, img, "--json")
    assert r.code == 0 and json.loads(r.out)[0]["class"] in ("circle", "square"), r
    r = cli("explain", run, img, "--out", tmp_path / "cam")
    assert r.code == 0 and "layer _conv_head" in r.out and list((tmp_path / "cam").glob("*_gradcam.png")), r
    r = cli("summary", run)
    assert r.code == 0 and "fine-tuned from efficientnet_lite0.in1k" in r.out and "minus mean [0.498" in r.out, r
    assert "efficientnet_lite0.in1k" in (run / "report.html").read_text()
    # ONNX: the graph takes uint8 pixels and applies the weights' mean/std itself
    r = cli("export", run, "--format", "onnx", "--out", tmp_path / "m.onnx", "--json")
    assert r.code == 0, r
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(sess.run(None, {"images": x})[1], clf.predict_proba(x), atol=1e-5)
    side = json.loads((tmp_path / "m.onnx.json").read_text())
    assert is_tf_lite(side["normalization"])
    # serve: the same probabilities over HTTP
    from cnnlab.serve.app import ServeConfig, create_app
    from test_serve import live_server, png_bytes

    with live_server(create_app(ServeConfig(model=str(run), backend="torch"))) as url:
        res = httpx.post(f"{url}/v1/predict", files={"file": ("x.png", png_bytes(x[0]), "image/png")}).json()
    got = res["predictions"][0] if "predictions" in res else res
    want = clf.predict_proba(x[:1])[0]
    probs = {p["class"]: p["probability"] for p in got["top_k"]}
    assert probs[clf.class_names[int(want.argmax())]] == pytest.approx(float(want.max()), abs=1e-4)


@pytest.mark.parametrize("kind", ["seed_csv_rgb", "npz_grey_3_classes"])
def test_pretrained_models_take_seed_csvs_and_grey_npz(cli, tmp_path, kind):
    if kind == "seed_csv_rgb":
        spec = write_seed_csv(tmp_path / "csv", n_train=48, n_test=16, size=32)
    else:
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (60, 36, 36, 1), dtype=np.uint8)
        y = np.arange(60) % 3
        x[y == 1, 8:20, 8:20] = 255
        spec = tmp_path / "grey.npz"
        np.savez(spec, x=x, y=y)
    r = cli("train", "--data", spec, "--model", "efficientnet_lite0", "--pretrained", "--epochs", "2", "--freeze-epochs", "1",
            "--batch-size", "16", "--out", tmp_path / "run", "--quiet")
    assert r.code == 0, r
    meta = Classifier.load(tmp_path / "run").meta
    channels = 1 if kind.startswith("npz") else 3
    assert meta["input_shape"][0] == channels and len(meta["normalization"]["mean"]) == channels


def fake_forward(at_224: float):
    """images/s proportional to 1/pixels, `at_224` images/s at 224 px, 2.2x slower for lite2."""
    return lambda name, size, *a, **k: at_224 * (224 / size) ** 2 / (2.2 if name.endswith("lite2") else 1.0)


def test_the_default_recipe_picks_the_most_accurate_backbone_that_fits_the_budget(monkeypatch):
    monkeypatch.setattr(auto, "forward_images_per_second", fake_forward(40.0))
    cfg = TrainConfig(data="x")
    # 1440 training + 560 other images: 2000 passes; lite2 at 260 px runs 40 / 2.2 / (260/224)^2 = 13.5 images/s -> 148 s
    p = auto.plan(cfg, 1440, None, 2, 3, n_eval=560)
    assert (p.cfg.model, p.cfg.image_size, p.cfg.pretrained, p.cfg.freeze, p.cfg.augment, p.cfg.tta) == (
        "efficientnet_lite2", 260, True, True, "none", False)
    assert "auto: pretrained efficientnet_lite2 at 260 px, frozen backbone + new head (its frozen features take ~148s" in p.note
    # 60 s: 0.75 * (60 - 8 s fixed - 2000 * 3 ms loading) = 34.5 s of passes: lite2 at 224 px 110 s, lite0 at 224 px
    # 50 s, at 192 px 2000 / 54.4 = 36.8 s, at 160 px 2000 / 78.4 = 25.5 s
    assert (auto.EXTRACT_SHARE, auto.FIXED_OVERHEAD_S, auto.LOAD_S_PER_IMAGE) == (0.75, 8.0, 0.003)
    short = auto.plan(TrainConfig(data="x", time_budget=60), 1440, None, 2, 3, n_eval=560)
    assert (short.cfg.model, short.cfg.image_size) == ("efficientnet_lite0", 160)
    # asking for epochs fine-tunes instead of stopping after the frozen phase; fixed-size data is resized for the backbone
    tuned = auto.plan(TrainConfig(data="x", epochs=5), 1440, (100, 100), 2, 3, n_eval=560)
    assert tuned.cfg.freeze is False and tuned.cfg.image_size == 260 and tuned.cfg.resolved().freeze_epochs == 1
    assert tuned.cfg.resolved().augment == "light" and "fine-tuned after a frozen phase" in tuned.note


def test_no_pretrained_small_images_and_missing_weights_keep_the_from_scratch_recipe(monkeypatch):
    monkeypatch.setattr(auto, "images_per_second", lambda size, *a, **k: 1e6)
    monkeypatch.setattr(auto, "forward_images_per_second", fake_forward(40.0))
    assert auto.plan(TrainConfig(data="x", pretrained=False), 1440, None, 2, 3).cfg.model == "resnet9"
    # 32 px digits: ImageNet features scored 61.7% where the from-scratch recipe scores ~99% (docs/recipes.md)
    assert auto.plan(TrainConfig(data="x"), 1440, (32, 32), 10, 1).cfg.model == "resnet9"
    assert auto.plan(TrainConfig(data="x"), 1440, (64, 64), 10, 1).cfg.model == "efficientnet_lite2"
    assert auto.plan(TrainConfig(data="x", pretrained=True), 1440, (32, 32), 10, 1).cfg.model == "efficientnet_lite2"
    monkeypatch.setattr(auto, "pretrained_available", lambda name: False)
    assert auto.plan(TrainConfig(data="x"), 1440, None, 2, 3).cfg.model == "resnet9"


def test_models_pretrained_lists_every_weight_set_and_where_it_is(cli):
    r = cli("models", "--pretrained", "--json")
    assert r.code == 0, r
    rows = {row["name"]: row for row in json.loads(r.out)}
    assert set(rows) == set(pt.CATALOGUE)
    assert rows["efficientnet_lite0.in1k"]["offline"] in ("package", "cache")
    assert rows["tv_resnet50.tv_in1k"]["urls"][0].startswith("https://download.pytorch.org/models/resnet50-0676ba61")
    r = cli("models", "--pretrained")
    assert r.code == 0 and "efficientnet_lite2.in1k" in r.out


def test_two_ranks_fine_tune_a_pretrained_model(data, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "cnnlab", "train", "--data", str(data), *LITE0, "--epochs", "2", "--freeze-epochs", "1",
                        "--aug", "none", "--nproc", "2", "--out", str(out)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 0, r.stderr
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "completed" and info["distributed"]["world_size"] == 2
    got, ref = load_file(out / "model.safetensors"), package_weights()
    assert torch.equal(got["_blocks.0._depthwise_conv.weight"], ref["_blocks.0._depthwise_conv.weight"])
    assert not torch.equal(got["_conv_head.weight"], ref["_conv_head.weight"])
    assert Classifier.load(out).meta["pretrained"]["weights"] == "efficientnet_lite0.in1k"


def test_tuning_a_pretrained_model_searches_frozen_epochs_and_the_backbone_lr():
    import optuna

    from cnnlab.tune import space as sp

    base = TrainConfig(data="x", pretrained=True, epochs=4)
    space = sp.default_space({"pretrained": True, "epochs": 4})
    assert {"backbone_lr", "freeze_epochs", "lr", "model"} <= set(space) and "width" not in space and "epochs" not in space
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    cfg = sp.apply(sp.sample(space, trial), base, "trial")
    assert 0.01 <= cfg.backbone_lr <= 0.5 and 1 <= cfg.freeze_epochs <= 3 and cfg.model.startswith("efficientnet_lite")


def test_freeze_options_with_the_default_recipe_choose_a_pretrained_backbone(monkeypatch):
    monkeypatch.setattr(auto, "forward_images_per_second", fake_forward(40.0))
    p = auto.plan(TrainConfig(data="x", epochs=4, freeze_epochs=2).validate(), 1440, (32, 32), 10, 1, n_eval=100)
    assert p.cfg.model.startswith("efficientnet_lite") and p.cfg.resolved().freeze_epochs == 2


def test_on_a_time_budget_fine_tuning_stops_two_unfrozen_epochs_after_the_last_improvement(cli, data, tmp_path):
    r = cli("train", "--data", data, "--model", "efficientnet_lite0", "--pretrained", "--image-size", "32", "--time-budget", "300",
            "--out", tmp_path / "budget")
    assert r.code == 0, r
    cfg = yaml.safe_load((tmp_path / "budget" / "config.yaml").read_text())
    assert (cfg["freeze_epochs"], cfg["patience"]) == (10, 2)
    rows = (tmp_path / "budget" / "metrics.csv").read_text().splitlines()[1:]
    val = [float(row.split(",")[4]) for row in rows]
    best = max(range(len(val)), key=lambda i: (val[i], -i)) + 1  # the first epoch with the best val accuracy
    assert len(rows) == max(best, 10) + 2 and "early stopping" in r.out, r
