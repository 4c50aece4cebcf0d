"""Training speed of every registry model: cnnlab's CPU path vs plain PyTorch, alternating, same process.

    python -m benchmarks.registry_speed                    # 64 px, batch 64, 3 channels, 2 classes
    python -m benchmarks.registry_speed --size 100 --models seed_cnn,resnet9 --repeats 5

"cnnlab" is what `cnnlab train` runs per step: channels_last weights and inputs, bf16 autocast where the
CPU has native bf16 (else fp32), the fused max-pool+ReLU kernel, the allocator setting that keeps freed
activations (engine/device.py; process-wide, so the plain side gets it too — benchmarks.seed_vs_keras
measures whole runs in separate processes). "plain" is the same model and optimizer step as a PyTorch user writes it:
fp32, NCHW, torch's own max-pool + ReLU (CNNLAB_FUSED off for that side). Each repeat times a few steps of
each side in turn, so machine load drifts over both; the table shows the median images/s and the ratio.
The step is the training step only (forward, loss, backward, AdamW), on random inputs: data loading and
augmentation are measured by benchmarks.seed_vs_keras.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cnnlab import __version__, models
from cnnlab.engine.device import autocast, cpu_description, resolve_precision, tune_cpu_allocator
from cnnlab.engine.trainer import train_loss
from cnnlab.models import fused


def make_step(name: str, size: int, batch: int, fast: bool):
    torch.manual_seed(0)
    model = models.create_model(name, 2, 3, (size, size)).train()
    fmt = torch.channels_last if fast else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.rand(batch, 3, size, size).contiguous(memory_format=fmt)
    target = torch.full((batch, 2), 0.5)
    precision = resolve_precision("auto", torch.device("cpu"), model) if fast else "fp32"

    def step() -> None:
        with autocast(torch.device("cpu"), precision):
            out = model(x)
        loss = train_loss(out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, precision


def timed(step, steps: int, fast: bool) -> float:
    old = fused._lib
    if not fast:
        fused._lib = None  # torch's max-pool + ReLU for the plain side
    try:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        return time.perf_counter() - t0
    finally:
        fused._lib = old


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(m for m in models.list_models() if m != "layer_list"))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per side per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    tune_cpu_allocator()
    fused.library()
    print(f"cnnlab {__version__}, torch {torch.__version__}, {cpu_description()}, {torch.get_num_threads()} threads, "
          f"{args.size} px, batch {args.batch_size}, fused kernel {'on' if fused.library() else 'unavailable'}, {time.strftime('%Y-%m-%d')}")
    print(f"| model | params | cnnlab img/s | plain PyTorch img/s | ratio |")
    print("|---|---|---|---|---|")
    for name in args.models.split(","):
        sides = {fast: make_step(name, args.size, args.batch_size, fast) for fast in (True, False)}
        for fast, (step, _) in sides.items():  # warm-up (oneDNN primitive creation, first-touch memory)
            timed(step, 1, fast)
        rates: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.repeats):
            for fast, (step, _) in sides.items():
                rates[fast].append(args.steps * args.batch_size / timed(step, args.steps, fast))
        fast_r, plain_r = statistics.median(rates[True]), statistics.median(rates[False])
        params = sum(p.numel() for p in models.create_model(name, 2, 3, (args.size, args.size)).parameters())
        print(f"| {name} ({sides[True][1]}) | {params / 1e6:.2f} M | {fast_r:.0f} | {plain_r:.0f} | {fast_r / plain_r:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
