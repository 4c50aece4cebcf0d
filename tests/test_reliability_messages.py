"""Reliability, message class (issue #21): signals at the edges of a run, messages that were cut or named the wrong
thing, silence where a user needs to know, and training too large for memory — each a complete line the user can act on."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.engine import memory
from cnnlab.engine.callbacks import Callback
from cnnlab.engine.model_file import model_metadata, save_model_file
from cnnlab.engine.run_dir import RunFolder
from cnnlab.engine.session import train as session_train
from cnnlab.engine.trainer import StopTraining
from cnnlab.config import TrainConfig
from cnnlab.errors import TrainingError
from cnnlab.models import create_model

SHAPES = "builtin:shapes?n=64&size=16&classes=2"
pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ("--model", "seed_cnn", "--epochs", "1", "--batch-size", "16", "--no-tensorboard", "--quiet")


def one_line_error(r, code: int = 2) -> str:
    assert r.code == code and r.err.startswith("error: ") and r.err.count("\n") == 1, r
    assert "Traceback" not in r.err and "Warning" not in r.err, r
    return r.err.strip()


# ---------------------------------------------------------------- signals at the edges of a run


def test_sigterm_while_the_report_is_written_says_the_run_is_complete_and_how_to_rebuild_it(cli, tmp_path, monkeypatch):
    import cnnlab.api as api

    real = api.write_run_report

    def terminated_meanwhile(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # (the handler runs before the next line)
        return real(*args, **kwargs)

    class Killed(Exception):
        """What SIGTERM's default action (ending the process, silently) stands for inside this test process."""

    def default_action(signum, frame):
        raise Killed()

    monkeypatch.setattr(api, "write_run_report", terminated_meanwhile)
    old = signal.signal(signal.SIGTERM, default_action)
    try:
        r = cli("train", "--data", SHAPES, *TINY, "--out", tmp_path / "run")
    finally:
        signal.signal(signal.SIGTERM, old)
    run = tmp_path / "run"
    assert r.code == 128 + signal.SIGTERM, r
    assert f"cnnlab report {run}" in r.err and "the run is complete" in r.err and "Traceback" not in r.err, r
    assert r.err.strip().endswith("interrupted (SIGTERM)"), r
    assert RunFolder(run).status == "completed" and (run / "model.safetensors").is_file() and not (run / "report.html").exists()


class _CtrlCBeforeTheFirstEpoch(Callback):
    def on_train_start(self, run) -> None:
        raise KeyboardInterrupt


def test_resume_before_the_first_checkpoint_says_the_command_that_starts_it_again(cli, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match="before the first checkpoint"):
        session_train("seed_cnn", SHAPES, out=run, epochs=1, batch_size=16, tensorboard=False, quiet=True,
                      callbacks=[_CtrlCBeforeTheFirstEpoch()])
    assert (run / "config.yaml").is_file() and not (run / "last.ckpt").exists()
    err = one_line_error(cli("train", "--resume", run))
    assert "no checkpoint to resume from" in err and "before its first checkpoint" in err, err
    command = err.split("start it again with: ", 1)[1]
    assert command == f"cnnlab train --config {run / 'config.yaml'} --out {run} --overwrite", err
    again = cli(*shlex.split(command)[1:])  # exactly what the message says
    assert again.code == 0 and RunFolder(run).status == "completed", again


def test_run_json_counts_every_resume(cli, tmp_path):
    run = tmp_path / "run"

    def stop_after(epoch):
        def on_epoch_end(row):
            if row["epoch"] >= epoch:
                raise StopTraining

        return on_epoch_end

    with pytest.raises(StopTraining):
        session_train("seed_cnn", SHAPES, out=run, epochs=3, batch_size=16, tensorboard=False, quiet=True, on_epoch_end=stop_after(1))
    with pytest.raises(StopTraining):
        session_train(resume=run, quiet=True, on_epoch_end=stop_after(2))
    assert json.loads((run / "run.json").read_text())["resumed"] == 1
    r = cli("train", "--resume", run, "--quiet")
    assert r.code == 0, r
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["resumed"] == 2 and [row["epoch"] for row in RunFolder(run).metrics()] == [1, 2, 3]


# ---------------------------------------------------------------- messages cut, or naming the wrong thing


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (24, 24), (200, 10, 10)).save(path)
    return path


def test_a_model_file_whose_class_names_disagree_with_its_weights_says_so(cli, tmp_path, image):
    model = create_model("seed_cnn", 10, 3, (24, 24), filters=8, hidden=16)
    path = tmp_path / "m.safetensors"
    save_model_file(path, model, model_metadata(model, [f"c{i}" for i in range(3)], (3, 24, 24)))  # 3 names, 10 outputs
    err = one_line_error(cli("predict", path, image))
    assert err.startswith(f"error: {path}: weights do not match") and "has 10 outputs" in err and "lists 3 classes" in err, err
    assert err.endswith("restore the original file or retrain the model"), err


def test_weights_of_another_shape_name_the_tensor_and_both_shapes(cli, tmp_path, image):
    path = tmp_path / "m.safetensors"
    small = create_model("seed_cnn", 2, 3, (24, 24), filters=4, hidden=16)
    meta = model_metadata(create_model("seed_cnn", 2, 3, (24, 24), filters=8, hidden=16), ["a", "b"], (3, 24, 24))
    save_model_file(path, small, meta)
    err = one_line_error(cli("predict", path, image))
    assert "have other shapes (first: conv1.weight is 4x3x3x3 in the file, 8x3x3x3 in the architecture)" in err, err
    assert err.endswith("re-export or retrain it"), err


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["pickle", "truncated"])
def test_an_unusable_last_ckpt_is_one_whole_sentence_without_torch_warnings(cli, tmp_path, kind):
    run = tmp_path / "run"
    RunFolder(run).path.mkdir()
    RunFolder(run).write_config(TrainConfig(data=SHAPES, model="seed_cnn", epochs=1))
    marker = tmp_path / "pwned"
    if kind == "pickle":
        import pickle

        (run / "last.ckpt").write_bytes(pickle.dumps({"model": _Payload(marker)}, protocol=4))  # protocol 4: torch warns
    else:
        torch.save({"format": "cnnlab-ckpt-1", "model": torch.zeros(1000)}, run / "last.ckpt")
        (run / "last.ckpt").write_bytes((run / "last.ckpt").read_bytes()[:500])
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")  # every warning that reaches the console is in `shown`
        err = one_line_error(cli("train", "--resume", run))
    assert not shown, [str(w.message)[:80] for w in shown]
    assert "unreadable checkpoint" in err and err.endswith(f"cnnlab train --config {run / 'config.yaml'} --out {run} --overwrite"), err
    assert ("a pickle" in err) == (kind == "pickle") and ("damaged" in err) == (kind == "truncated"), err
    assert not marker.exists()


# ---------------------------------------------------------------- silence where a user needs to know


def test_unicode_class_names_draw_without_warnings_and_skipped_images_are_counted(cli, tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for name in ("猫", "の", "café"):
        (root / name).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    (root / "café" / "notes.png").write_text("not an image")
    (root / "猫" / "empty.png").write_bytes(b"")
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")  # every warning that reaches the console is in `shown`
        r = cli("train", "--data", root, *TINY, "--max-bad-fraction", "0.2", "--out", tmp_path / "run")
    assert r.code == 0, r
    assert not shown and "Glyph" not in r.err, [str(w.message)[:80] for w in shown]
    assert f"warning: skipped 2 unreadable image(s) — {tmp_path / 'run' / 'bad_files.txt'}" in r.err, r.err
    assert len((tmp_path / "run" / "bad_files.txt").read_text().splitlines()) == 2


def test_figures_use_an_installed_font_that_has_the_characters(tmp_path):
    from cnnlab import plotting

    x = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    fig = plotting.grid_figure(x, ["の", "a"])  # hiragana: not in DejaVu Sans; STIXGeneral (bundled with matplotlib) has it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing glyph would raise here
        plotting.figure_png(fig)
    family = fig.axes[0].title.get_fontfamily()
    assert len(family) > 1 and family[0] == "sans-serif", family  # the default font first, a fallback after it
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    fallbacks = [font_manager.findfont(font_manager.FontProperties(family=f), fallback_to_default=False) for f in family[1:]]
    assert any(ord("の") in FT2Font(f).get_charmap() for f in fallbacks), fallbacks


# ---------------------------------------------------------------- training too large for memory


def test_training_that_cannot_fit_in_memory_is_refused_with_what_would(cli, tmp_path, monkeypatch):
    model = create_model("seed_cnn", 2, 3, (32, 32))
    _, act = memory.count_forward(model, torch.zeros(1, 3, 32, 32), memory.run_precision(TrainConfig(data="x", model="seed_cnn"), model))
    fp = memory.footprint(model, act, (32, 32, 3))
    available = fp.need(8) * 1.2  # a machine that holds a few images' activations, not 64
    monkeypatch.setattr(memory, "available_bytes", lambda device: available)
    data = "builtin:shapes?n=96&size=32&classes=2"
    args = ("--model", "seed_cnn", "--epochs", "1", "--no-tensorboard", "--quiet")
    err = one_line_error(cli("train", "--data", data, *args, "--batch-size", "64", "--out", tmp_path / "big"))
    assert "--batch-size 64 needs at least" in err and "is available — use --batch-size " in err and "--image-size" in err, err
    assert not (tmp_path / "big").exists()
    fits = int(err.split("use --batch-size ", 1)[1].split()[0])
    assert 1 <= fits < 64, err
    r = cli("train", "--data", data, *args, "--batch-size", fits, "--out", tmp_path / "fits")  # what it named is accepted
    assert r.code == 0 and RunFolder(tmp_path / "fits").status == "completed", r


PEAK_SCRIPT = r"""
import json, sys, torch
from cnnlab.config import TrainConfig
from cnnlab.data.augment import Augmenter, resolve_ops
from cnnlab.engine import memory
from cnnlab.engine.model_file import default_normalization
from cnnlab.engine.optim import build_optimizer
from cnnlab.engine.trainer import StepContext, train_step
from cnnlab.models import create_model

def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))

torch.set_num_threads(1)
out = []
for name, size, batch in json.loads(sys.argv[1]):
    cfg = TrainConfig(data="x", model=name, batch_size=batch, augment="standard").resolved()
    model = create_model(name, 10, 3, (size, size))
    precision = memory.run_precision(cfg, model)
    _, act = memory.count_forward(model, torch.zeros(1, 3, size, size), precision)
    need = memory.footprint(model, act, (size, size, 3)).need(batch)
    x, y = torch.randint(0, 255, (batch, size, size, 3), dtype=torch.uint8), torch.randint(0, 10, (batch,))
    ctx = StepContext(model, build_optimizer(model, cfg), cfg, default_normalization(3), torch.device("cpu"), precision, 10,
                      Augmenter(resolve_ops(cfg.augment, cfg.aug_args), None))
    before = status("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")  # restart the peak (VmHWM) from here
    for step in range(2):
        train_step(ctx, x, y, torch.Generator().manual_seed(step))
    out.append([name, need, status("VmHWM") - before])
print(json.dumps(out))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc to measure peak memory")
def test_the_estimate_never_exceeds_what_training_really_takes():
    """The refusal's premise, measured: a real training step's peak memory growth is above the share of the estimate
    that refuses a run (memory.REFUSE_FRACTION), so a run that fits is never refused. vgg came closest of the models
    measured (peak 1.01x the count at 128 px; engine/memory.py lists them)."""
    for case in (["vgg", 64, 32],):  # one process per case: memory one case freed would be reused by the next
        p = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, json.dumps([case])], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        [(name, need, peak)] = json.loads(p.stdout)
        assert memory.REFUSE_FRACTION * need <= peak, (name, need, peak)
        assert need >= 1 << 20, (name, need)  # a count, not nothing


def test_the_pre_flight_count_is_cheap_at_the_default_size():
    model = create_model("resnet9", 2, 3, (96, 96))
    memory.count_forward(model, torch.zeros(1, 3, 96, 96), "fp32")  # (the first call warms the kernels up, as training's would)
    seconds = []
    for _ in range(3):  # the fastest of three: a busy shared machine slows single calls
        t0 = time.perf_counter()
        memory.count_forward(model, torch.zeros(1, 3, 96, 96), "fp32")
        seconds.append(time.perf_counter() - t0)
    assert min(seconds) < 1.0, seconds
