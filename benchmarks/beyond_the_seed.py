"""The walk of docs/beyond-the-seed.md on real photos: every command of the page, with the page's own flags.

    python -m benchmarks.beyond_the_seed                          # ../shared/datasets/cats_vs_dogs/train
    python -m benchmarks.beyond_the_seed --source PHOTOS --keep walk/

The source folder (one subfolder per class) is split once into photos/train and a held-out photos/test of
--test-per-class photos per class (benchmarks.default_recipe.split_folder, split seed 0: symlinks, nothing is
copied), and new/cat.jpg, new/dog.jpg link to the first held-out photo of the first two classes. Then every
```bash command of the page runs, in order, in that folder, each as its own `python -m cnnlab` process, as a
reader would type it — except `cnnlab serve` and the `curl` that talks to it (a server does not end by itself;
tests/test_beyond_the_seed.py runs both). The page fixes its epochs, so accuracies do not depend on the machine's
speed; wall times do, so the load average after each command is printed beside it (the whole walk took 28 and 63
minutes on the shared 2-core machine, at load averages of 2-6: BENCHMARKS.md).

Printed: one markdown table row per command — the page's step, the command, what it reached (held-out accuracy and
the last epoch's train/validation accuracy of a training run; the best trial's for `tune`; the suggested LR of
`lr-find`; accuracy and most-confused pairs of `evaluate`), its wall time and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.default_recipe import DEFAULT_SOURCE, split_folder

PAGE = Path(__file__).resolve().parents[1] / "docs" / "beyond-the-seed.md"
NOT_RUN = ("cnnlab serve", "curl ")  # a server blocks until stopped; the test suite runs these two


def page_commands(page: Path = PAGE) -> list[tuple[str, str]]:
    """(step heading, command) for every line of every ```bash block, in page order."""
    out, step = [], ""
    for part in re.split(r"(^## [^\n]*$|^```bash\n.*?^```)", page.read_text(encoding="utf-8"), flags=re.M | re.S):
        if part.startswith("## "):
            step = part[3:].strip()
        elif part.startswith("```bash"):
            out += [(step, ln.strip()) for ln in part[len("```bash\n"):-3].splitlines() if ln.strip()]
    return out


def option(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv and argv.index(flag) + 1 < len(argv) else None


def run_figures(run: Path) -> str:
    info = json.loads((run / "run.json").read_text())
    final, test = info.get("final") or {}, info.get("test") or {}
    last = f"last epoch: train {final.get('train_accuracy', float('nan')):.1%}" + (
        f", val {final['val_accuracy']:.1%}" if final.get("val_accuracy") is not None else "")
    return f"**{test['accuracy']:.2%}** ({test['n']} photos); {last}, {final.get('epoch')} epochs"


def figures(argv: list[str], stdout: str, folder: Path) -> str:
    """What the command reached, read from the files it wrote (run.json, trials.csv) or its own output."""
    from cnnlab.insight.compare import best_trial

    command = argv[1]
    if command == "train":
        return run_figures(folder / option(argv, "--out"))
    if command == "tune":
        run, number = best_trial(folder / option(argv, "--out"))
        return f"best trial {number}: {run_figures(run)}"
    if command == "lr-find":
        return next((ln for ln in stdout.splitlines() if ln.startswith("suggested lr")), "")
    if command == "evaluate":
        lines = [ln.strip() for ln in stdout.splitlines()]
        return "; ".join(ln for ln in lines if " accuracy " in ln or ln.startswith("most confused"))
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--keep", type=Path, help="walk in this folder and keep it (default: a temporary folder, removed)")
    args = ap.parse_args(argv)
    if not args.source.is_dir():
        print(f"{args.source}: no such folder — pass --source PHOTOS (one subfolder per class)", file=sys.stderr)
        return 2
    folder = args.keep or Path(tempfile.mkdtemp(prefix="cnnlab-beyond-the-seed-"))
    if args.keep and folder.exists() and any(folder.iterdir()):
        print(f"{folder}: not empty — the walk starts in an empty folder", file=sys.stderr)
        return 2
    folder.mkdir(parents=True, exist_ok=True)
    counts = split_folder(args.source, folder / "photos", args.test_per_class)
    (folder / "new").mkdir()
    for cls, name in zip(sorted(counts), ("cat.jpg", "dog.jpg")):
        os.symlink(sorted((folder / "photos" / "test" / cls).iterdir())[0].resolve(), folder / "new" / name)

    from cnnlab import __version__
    from cnnlab.engine.device import cpu_description

    print(f"cnnlab {__version__}, {cpu_description()}, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, load average "
          f"{os.getloadavg()[0]:.2f}; {args.source}: {', '.join(f'{k} {v}' for k, v in counts.items())}, "
          f"{args.test_per_class} per class held out (split seed 0); walking in {folder}")
    print("| step | command | reached | wall | load |")
    print("|---|---|---|---|---|")
    total, failed = time.perf_counter(), 0
    for step, cmd in page_commands():
        if cmd.startswith(NOT_RUN):
            print(f"| {step.split(':')[0]} | `{cmd}` | not run here (a server; tests/test_beyond_the_seed.py runs it) | | |", flush=True)
            continue
        argv = shlex.split(cmd)
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "cnnlab", *argv[1:]], cwd=folder, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            failed += 1
            reached = f"failed (exit {p.returncode}): {(p.stderr.strip() or p.stdout.strip())[-300:]}"
        else:
            reached = figures(argv, p.stdout, folder)
        print(f"| {step.split(':')[0]} | `{cmd}` | {reached} | {wall:.0f} s | {os.getloadavg()[0]:.1f} |", flush=True)
    print(f"\nwhole walk: {(time.perf_counter() - total) / 60:.1f} min; {failed} command(s) failed")
    if not args.keep:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
