"""Fine-tuning throughput: cnnlab's unfrozen training step against plain PyTorch and Keras, alternating.

    python -m benchmarks.finetune_speed                                   # mobilenet_v2 + efficientnet_lite0, 160 and 224 px
    python -m benchmarks.finetune_speed --models mobilenet_v2 --sizes 160 --keras-python /path/to/tf/bin/python

Each side runs in its own process (so no side inherits another's allocator, thread or oneDNN state), one
after another, the order reversed every other repeat; the table shows the median training images/s.
- cnnlab: the step `cnnlab train --model M --pretrained --epochs E --freeze-epochs F` runs after unfreezing:
  the registry model in channels_last, the precision `auto` picks for it on this CPU, AdamW with the
  backbone at 0.1x the head's LR, cnnlab's loss, and the stem and the 1/2- and 1/4-resolution blocks kept
  frozen (`freeze_early`, the default);
- cnnlab-all: the same with every layer trained (`--no-freeze-early`);
- torch-nchw / torch-cl: the same architecture as a PyTorch user writes the step: fp32, AdamW, NCHW or
  channels_last;
- keras: `tf.keras.applications.MobileNetV2(weights=None)` with Adam, `train_on_batch` (mobilenet_v2 only;
  needs TensorFlow in --keras-python).
Random inputs, batch 32, 2 classes: the step only (forward, loss, backward, optimizer), not decoding.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from benchmarks._common import ROOT, run_side

KERAS_CHILD = r"""
import json, sys, time
import numpy as np, tensorflow as tf
size, batch, steps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
tf.keras.utils.set_random_seed(0)
m = tf.keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3), classes=2)
m.compile(optimizer=tf.keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
x = np.random.rand(batch, size, size, 3).astype("float32"); y = np.random.randint(0, 2, batch)
for _ in range(2):
    m.train_on_batch(x, y)
t0 = time.perf_counter()
for _ in range(steps):
    m.train_on_batch(x, y)
print(json.dumps({"img_s": steps * batch / (time.perf_counter() - t0), "precision": "fp32", "tf": tf.__version__}))
"""


def child(side: str, model_name: str, size: int, batch: int, steps: int) -> dict:
    import torch

    from cnnlab.config import TrainConfig
    from cnnlab.engine.device import autocast, resolve_precision, tune_cpu_allocator
    from cnnlab.engine.trainer import build_optimizer, train_loss
    from cnnlab.models import create_model

    torch.manual_seed(0)
    model = create_model(model_name, 2, 3, (size, size)).train()
    target = torch.full((batch, 2), 0.5)
    if side.startswith("cnnlab"):
        from cnnlab.engine.finetune import freeze_early_layers

        tune_cpu_allocator()
        if side == "cnnlab":
            freeze_early_layers(model)
        model.cnnlab_pretrained = {"weights": "benchmark"}  # the optimizer groups of a fine-tuning run
        opt = build_optimizer(model, TrainConfig(data="x", model=model_name, pretrained=True))
        precision = resolve_precision("auto", torch.device("cpu"), model)
        fmt = torch.channels_last
    else:
        opt = torch.optim.AdamW(model.parameters(), 1e-4)
        precision = "fp32"
        fmt = torch.channels_last if side == "torch-cl" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.rand(batch, 3, size, size).contiguous(memory_format=fmt)

    def step() -> None:
        with autocast(torch.device("cpu"), precision):
            out = model(x)
        loss = train_loss(out, target) if side.startswith("cnnlab") else torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0], target[:, 1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up: oneDNN primitives, first-touch memory
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return {"img_s": steps * batch / (time.perf_counter() - t0), "precision": precision}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mobilenet_v2,efficientnet_lite0")
    ap.add_argument("--sizes", default="160,224")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per side per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keras-python", help="a Python with TensorFlow for the Keras side (default: this one, if it has TensorFlow)")
    ap.add_argument("--child", nargs=5, metavar=("SIDE", "MODEL", "SIZE", "BATCH", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        side, model_name, size, batch, steps = args.child
        print(json.dumps(child(side, model_name, int(size), int(batch), int(steps))))
        return 0
    import torch

    from cnnlab import __version__
    from cnnlab.engine.device import cpu_description

    keras_python = args.keras_python or sys.executable
    has_keras = subprocess.run([keras_python, "-c", "import tensorflow"], capture_output=True).returncode == 0
    print(f"cnnlab {__version__}, torch {torch.__version__}, {cpu_description()}, batch {args.batch_size}, "
          f"{args.steps} steps x {args.repeats} repeats, {time.strftime('%Y-%m-%d %H:%M')}")
    print("| model | px | cnnlab img/s (precision) | cnnlab, all layers | torch fp32 NCHW | torch fp32 channels_last | Keras | "
          "cnnlab / best torch | all layers / best torch | cnnlab / Keras |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    env = {"PYTHONPATH": str(ROOT)}
    for model_name in args.models.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            sides = ["cnnlab", "cnnlab-all", "torch-nchw", "torch-cl"] + (["keras"] if model_name == "mobilenet_v2" and has_keras else [])
            rates: dict[str, list[float]] = {s: [] for s in sides}
            precision = ""
            for i in range(args.repeats):
                for side in sides if i % 2 == 0 else sides[::-1]:
                    if side == "keras":
                        cmd = [keras_python, "-c", KERAS_CHILD, str(size), str(args.batch_size), str(args.steps)]
                    else:
                        cmd = [sys.executable, "-m", "benchmarks.finetune_speed", "--child", side, model_name, str(size),
                               str(args.batch_size), str(args.steps)]
                    res = run_side(cmd, env=env)
                    rates[side].append(res["img_s"])
                    precision = res["precision"] if side == "cnnlab" else precision
                    print(f"{model_name} {size} repeat {i + 1} {side}: {res['img_s']:.1f} img/s", file=sys.stderr)
            med = {s: statistics.median(v) for s, v in rates.items()}
            best_torch = max(med["torch-nchw"], med["torch-cl"])
            keras = f"{med['keras']:.1f}" if "keras" in med else "—"
            vs_keras = f"{med['cnnlab'] / med['keras']:.2f}x" if "keras" in med else "—"
            print(f"| {model_name} | {size} | {med['cnnlab']:.1f} ({precision}) | {med['cnnlab-all']:.1f} | {med['torch-nchw']:.1f} | "
                  f"{med['torch-cl']:.1f} | {keras} | {med['cnnlab'] / best_torch:.2f}x | {med['cnnlab-all'] / best_torch:.2f}x | {vs_keras} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
