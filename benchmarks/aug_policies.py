"""Augmentation policies (RandAugment, TrivialAugmentWide) against `standard`: speed and accuracy on photos.

    python -m benchmarks.aug_policies speed                   # ours vs kornia (if importable), 32 images of 96 and 224 px
    python -m benchmarks.aug_policies accuracy --folds 3 -- --model resnet9 --no-pretrained --image-size 64 --epochs 30
    python -m benchmarks.aug_policies accuracy --folds 3 --train-per-class 200 -- \\
        --model efficientnet_lite0 --pretrained --epochs 3 --freeze-epochs 1 --image-size 160

speed: the time of one call on a batch, median of --repeats after a warm-up, the candidates interleaved so a
change in machine load hits them alike; `standard` (one warp + colour jitter) is the yardstick. kornia is
timed when it is importable (it is not a dependency: `pip install kornia` into a scratch folder and put that
on PYTHONPATH); note its policies differ (one op list for the whole batch per call, invert and solarize-add
in the list, no identity, the global RNG instead of a per-batch generator).

accuracy: K-fold cross-validation of the cats/dogs photos (benchmarks.default_recipe.split_folder: run j holds
out part j, seed j), every --policies entry trained on the same folds with the same flags apart from `--aug`,
interleaved per fold; the table gives each run's held-out accuracy (TTA, the default) and, per policy, mean +- sd
and the mean paired difference from `standard` on the same folds (the fold-to-fold spread cancels there).
Each run is `cnnlab train` in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.default_recipe import DEFAULT_SOURCE, mean_sd, split_folder


def _timed(repeats: int, candidates: dict) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for name, f in candidates.items():  # warm-up (first-call allocations, kornia's lazy setup)
        f()
    for _ in range(repeats):
        for name, f in candidates.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def speed(repeats: int, threads: int | None) -> int:
    import torch

    from cnnlab.data.augment import Augmenter, batch_generator, resolve_ops
    from cnnlab.engine.device import cpu_description

    torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        import kornia.augmentation.auto as kauto
    except ImportError:
        kauto = None
    print(f"{cpu_description()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.2f}"
          + ("" if kauto is None else f", kornia {sys.modules['kornia'].__version__}"))
    print("| batch | policy | ours (ms) | kornia (ms) | ours / standard |")
    print("|---|---|---|---|---|")
    for size in (96, 224):
        x = torch.rand(32, 3, size, size, generator=torch.Generator().manual_seed(0))
        y = torch.zeros(32, dtype=torch.long)
        ours = {p: Augmenter(resolve_ops(p)) for p in ("standard", "randaugment", "trivialaugment")}
        # the policies alone, without the flip/crop/shift warp their presets start with (kornia's are alone too)
        alone = {"randaugment": Augmenter(resolve_ops("none", {"n": 2, "m": 9})),
                 "trivialaugment": Augmenter(resolve_ops("none", {"trivialaugment": 1}))}
        cands = {f"ours {p}": (lambda a=a: a(x, y, batch_generator(0, 1, 0))) for p, a in ours.items()}
        cands.update({f"alone {p}": (lambda a=a: a(x, y, batch_generator(0, 1, 0))) for p, a in alone.items()})
        if kauto is not None:
            kra, kta = kauto.RandAugment(n=2, m=9), kauto.TrivialAugment()
            cands["kornia randaugment"] = lambda: kra(x)
            cands["kornia trivialaugment"] = lambda: kta(x)
        t = _timed(repeats, cands)
        for p in ("standard", "randaugment", "trivialaugment"):
            k = t.get(f"kornia {p}")
            note = "" if p == "standard" else f" (policy alone {t[f'alone {p}'] * 1e3:.1f})"
            print(f"| 32x3x{size}x{size} | {p} | {t[f'ours {p}'] * 1e3:.1f}{note} | {'-' if k is None else f'{k * 1e3:.1f}'} | "
                  f"{t[f'ours {p}'] / t['ours standard']:.2f} |", flush=True)
    return 0


def accuracy(args: argparse.Namespace) -> int:
    from cnnlab import __version__
    from cnnlab.engine.device import cpu_description

    policies = args.policies.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="cnnlab-aug-policies-"))
    print(f"cnnlab {__version__}, {cpu_description()}, {time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.2f}; "
          f"{args.source}: {args.folds}-fold" + (f", trained on {args.train_per_class} per class" if args.train_per_class else "")
          + f"; flags: {' '.join(args.extra)}")
    print("| fold | policy | wall | held-out accuracy | held-out loss | validation | epochs | load |")
    print("|---|---|---|---|---|---|---|---|")
    acc: dict[str, dict[int, float]] = {p: {} for p in policies}
    try:
        for j in range(args.folds):
            data = tmp / f"fold{j}"
            split_folder(args.source, data, 0, args.split_seed, (j, args.folds), args.train_per_class)
            for p in policies:
                run = tmp / f"run_{p}_{j}"
                cmd = [sys.executable, "-m", "benchmarks.aug_policies", "train", "--data", str(data), "--seed", str(j),
                       "--out", str(run), "--overwrite", "--quiet", "--aug", p, *args.extra]
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                r = subprocess.run(cmd, capture_output=True, text=True)
                wall = time.perf_counter() - t0
                if r.returncode != 0:
                    print(f"| {j} | {p} | failed (exit {r.returncode}) | {r.stderr.strip()[-300:]} | | | | |", flush=True)
                    continue
                info = json.loads((run / "run.json").read_text())
                a, val = info["test"]["accuracy"], info["final"].get("val_accuracy")
                acc[p][j] = a
                print(f"| {j} | {p} | {wall:.0f} s | {a:.2%} | {info['test'].get('loss', float('nan')):.4f} | {'-' if val is None else f'{val:.1%}'} | "
                      f"{info['final']['epoch']} | "
                      f"{load:.1f} |", flush=True)
                shutil.rmtree(run, ignore_errors=True)
            shutil.rmtree(data, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    base = acc.get("standard", {})
    for p in policies:
        if not acc[p]:
            continue
        line = f"{p}: {mean_sd(list(acc[p].values()))} over {len(acc[p])} folds"
        paired = [acc[p][j] - base[j] for j in acc[p] if j in base]
        if p != "standard" and paired:
            line += f"; minus standard on the same folds: {statistics.mean(paired):+.1%} (per fold {', '.join(f'{d:+.1%}' for d in paired)})"
        print(line)
    return 0 if all(len(acc[p]) == args.folds for p in policies) else 1


def train(argv: list[str]) -> int:
    """`cnnlab train ARGS`, with the run's input normalisation handed to its Augmenter (a pretrained model's
    inputs arrive normalised; data.augment un-normalises around pixel ops only when it knows the normalisation).
    A no-op once engine/trainer.StepContext passes it itself."""
    from cnnlab.cli import main as cli_main
    from cnnlab.engine import trainer

    post_init = trainer.StepContext.__post_init__

    def with_norm(self) -> None:
        post_init(self)
        if self.augmenter is not None and getattr(self.augmenter, "norm", None) is None:
            self.augmenter.norm = self.norm

    trainer.StepContext.__post_init__ = with_norm
    return cli_main(["train", *argv])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        return train(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    sp = sub.add_parser("speed", help="time one augmentation call on batches of 32 images")
    sp.add_argument("--repeats", type=int, default=20)
    sp.add_argument("--threads", type=int, help="torch threads (default: the cores)")
    ac = sub.add_parser("accuracy", help="K-fold held-out accuracy per policy on a photo folder")
    ac.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    ac.add_argument("--folds", type=int, default=3)
    ac.add_argument("--split-seed", type=int, default=0)
    ac.add_argument("--train-per-class", type=int, metavar="N")
    ac.add_argument("--policies", default="standard,randaugment,trivialaugment")
    ac.add_argument("extra", nargs="*", help="`cnnlab train` flags after --, the same for every policy")
    args = ap.parse_args(argv)
    if args.what == "speed":
        return speed(args.repeats, args.threads)
    if not args.source.is_dir():
        print(f"{args.source}: no such folder — pass --source PHOTOS (one subfolder per class)", file=sys.stderr)
        return 2
    return accuracy(args)


if __name__ == "__main__":
    sys.exit(main())
