"""Training on an image folder larger than it should be held in memory: peak memory and speed of `--stream`.

    python -m benchmarks.stream_memory [--images 50000] [--epochs 1] [--workers N] [--in-memory] [--markdown]
                                       [--folder DIR]

Generates a folder of JPEGs in a temporary directory (2 classes, sizes 200-500 px a side like the
cats/dogs photos, smooth random backgrounds with grain and a class-specific shape; removed afterwards unless
--folder names where to keep it), then runs `cnnlab train --stream` (seed_cnn, 100x100, batch 64) in a child
process for --epochs full epochs and samples the memory of that process and its decoding workers every 0.1 s
from /proc/PID/smaps_rollup: PSS (shared pages split between the processes that map them, so the sum does
not double-count what the fork shares), USS (private pages) and RSS (for reference). Reports the peaks
against the size of the model (weights, gradients and Adam's two moments) and the training speed from
run.json. --in-memory runs the same training with --no-stream afterwards, as the peer.
--images 2000 makes a quick check (still full epochs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

MIN_SIDE, MAX_SIDE = 200, 500  # like the cats/dogs JPEGs (most between 250 and 500 px a side)


# ------------------------------------------------------------------ data


def _make_chunk(args: tuple[str, int, int, int]) -> int:
    """Write images start..stop-1 (even: class a, odd: class b); deterministic per image index."""
    from PIL import Image, ImageDraw

    root, start, stop, seed = args
    grain = np.random.default_rng((seed, 1 << 40, start)).normal(0, 10, size=(2 * MAX_SIDE, 2 * MAX_SIDE, 1)).round().astype(np.int16)
    for i in range(start, stop):
        rng = np.random.default_rng((seed, i))
        w, h = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
        base = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BICUBIC)  # smooth colour field
        oy, ox = (int(v) for v in rng.integers(0, MAX_SIDE, size=2))  # film grain: a random window of one noise tile
        arr = np.clip(np.asarray(img, dtype=np.int16) + grain[oy : oy + h, ox : ox + w], 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
        draw = ImageDraw.Draw(img)
        cls = i % 2
        r = int(min(w, h) * rng.uniform(0.15, 0.35))
        cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        (draw.ellipse if cls == 0 else draw.rectangle)((cx - r, cy - r, cx + r, cy + r), fill=colour)
        img.save(Path(root) / ("circle" if cls == 0 else "square") / f"img{i:06d}.jpg", quality=int(rng.integers(75, 95)))
    return stop - start


def make_folder(root: Path, n: int, seed: int = 0, processes: int | None = None) -> float:
    """n JPEGs in root/circle and root/square; returns seconds taken."""
    t0 = time.perf_counter()
    for name in ("circle", "square"):
        (root / name).mkdir(parents=True, exist_ok=True)
    chunk = 500
    jobs = [(str(root), s, min(n, s + chunk), seed) for s in range(0, n, chunk)]
    with ProcessPoolExecutor(processes or os.cpu_count() or 1) as pool:
        done = 0
        for k in pool.map(_make_chunk, jobs):
            done += k
            if done % 10000 < chunk:
                print(f"  generated {done}/{n} images", file=sys.stderr, flush=True)
    return time.perf_counter() - t0


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.jpg"))


# ------------------------------------------------------------------ memory sampling


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def memory_kib(pid: int) -> dict[str, int] | None:
    """Rss, Pss and USS (Private_Clean + Private_Dirty) of one process in KiB, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    vals = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
            vals[key] = int(rest.split()[0])
    return {"rss": vals.get("Rss", 0), "pss": vals.get("Pss", 0), "uss": vals.get("Private_Clean", 0) + vals.get("Private_Dirty", 0)}


class MemorySampler(threading.Thread):
    """Polls the process tree of `pid`; keeps the peak of each total and of the main process alone."""

    def __init__(self, pid: int, interval_s: float = 0.1):
        """Peaks in KiB: total PSS/USS/RSS of the tree, PSS of the main process, most processes at once."""
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.peak = {"pss": 0, "uss": 0, "rss": 0, "main_pss": 0, "processes": 0}
        self.series: list[tuple[float, int]] = []  # (seconds since start, total PSS KiB)
        self.stop = threading.Event()

    def run(self) -> None:
        t0 = time.perf_counter()
        while not self.stop.is_set():
            tree = process_tree(self.pid)
            mems = {p: m for p in tree if (m := memory_kib(p)) is not None}
            if mems:
                self.series.append((time.perf_counter() - t0, sum(m["pss"] for m in mems.values())))
                for key in ("pss", "uss", "rss"):
                    self.peak[key] = max(self.peak[key], sum(m[key] for m in mems.values()))
                if self.pid in mems:
                    self.peak["main_pss"] = max(self.peak["main_pss"], mems[self.pid]["pss"])
                self.peak["processes"] = max(self.peak["processes"], len(mems))
            self.stop.wait(self.interval_s)


def deciles_mb(series: list[tuple[float, int]]) -> list[int]:
    """The highest total PSS (MB) in each tenth of the run: flat when memory does not grow with images seen."""
    if not series:
        return []
    end = series[-1][0] or 1.0
    bins = [0] * 10
    for t, kib in series:
        i = min(9, int(10 * t / end))
        bins[i] = max(bins[i], round(kib / 1024))
    return bins


def run_measured(cmd: list[str]) -> tuple[dict, float, list[int]]:
    """Run cmd, sampling its process tree; returns (peaks in KiB, wall seconds, PSS MB per tenth of the run)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = MemorySampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"training failed ({proc.returncode}): {' '.join(cmd)}\n{out[-2000:]}\n{err[-3000:]}")
    return sampler.peak, time.perf_counter() - t0, deciles_mb(sampler.series)


def baseline_pss_kib() -> int:
    """PSS of a process that has imported torch and cnnlab and built the model (the floor of any training run)."""
    code = ("import torch, cnnlab, sys; m = cnnlab.create_model('seed_cnn', num_classes=2, image_size=100);"
            "m(torch.zeros(64, 3, 100, 100)).sum().backward(); print('ready', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()
    pss = memory_kib(proc.pid)["pss"]
    proc.communicate("")
    return pss


# ------------------------------------------------------------------ main


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=50_000, help="images to generate (default 50000)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=100)
    ap.add_argument("--workers", type=int, help="decoding processes (default: cnnlab's)")
    ap.add_argument("--in-memory", action="store_true", help="also train with --no-stream (the peer; needs the decoded folder in RAM)")
    ap.add_argument("--folder", type=Path, help="generate into (or reuse) this folder and keep it")
    ap.add_argument("--markdown", action="store_true", help="print a BENCHMARKS.md row")
    args = ap.parse_args(argv)

    import PIL
    import torch

    from cnnlab import __version__, create_model
    from cnnlab.data.stream import default_workers
    from cnnlab.engine.device import cpu_description

    tmp = Path(tempfile.mkdtemp(prefix="cnnlab-stream-bench-"))
    try:
        folder = args.folder or tmp / "data"
        if not (folder / "circle").is_dir():
            print(f"generating {args.images} JPEGs in {folder} ...", file=sys.stderr, flush=True)
            gen_s = make_folder(folder, args.images)
            print(f"  {gen_s:.0f} s", file=sys.stderr)
        n_files = sum(1 for _ in folder.rglob("*.jpg"))
        data_mb = folder_bytes(folder) / 1e6
        decoded_mb = n_files * args.image_size**2 * 3 / 1e6
        params = sum(p.numel() for p in create_model("seed_cnn", num_classes=2, image_size=args.image_size).parameters())
        model_mb = params * 4 / 1e6
        model_state_mb = 4 * model_mb  # weights + gradients + Adam's exp_avg and exp_avg_sq
        base_mb = baseline_pss_kib() / 1024
        workers = args.workers if args.workers is not None else default_workers()

        rows = []
        for stream in ([True, False] if args.in_memory else [True]):
            run = tmp / ("run_stream" if stream else "run_memory")
            cmd = [sys.executable, "-m", "cnnlab", "train", "--data", str(folder), "--model", "seed_cnn", "--epochs", str(args.epochs),
                   "--batch-size", str(args.batch_size), "--image-size", str(args.image_size), "--out", str(run), "--quiet",
                   "--stream" if stream else "--no-stream", "--workers", str(workers)]
            load_before = load_average()
            print(f"training ({'--stream' if stream else '--no-stream'}): {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
            peak, wall_s, deciles = run_measured(cmd)
            info = json.loads((run / "run.json").read_text())
            final = info["final"]
            rows.append({
                "mode": "stream" if stream else "in-memory", "workers": workers if stream else 0,
                "peak_pss_mb": peak["pss"] / 1024, "peak_uss_mb": peak["uss"] / 1024, "peak_rss_mb": peak["rss"] / 1024,
                "peak_main_pss_mb": peak["main_pss"] / 1024, "processes": peak["processes"],
                "beyond_model_mb": peak["pss"] / 1024 - model_state_mb, "pss_mb_per_tenth_of_run": deciles,
                "train_img_s": info.get("train_images_per_second"), "seconds": info["seconds"], "wall_s": wall_s,
                "train_n": info["dataset"]["splits"]["train"], "val_n": info["dataset"]["splits"].get("val", 0),
                "val_accuracy": final.get("val_accuracy"), "load": f"{load_before} → {load_average()}",
            })
            shutil.rmtree(run, ignore_errors=True)

        meta = {
            "date": time.strftime("%Y-%m-%d"), "machine": cpu_description(), "python": platform.python_version(),
            "torch": torch.__version__, "pillow": PIL.__version__, "cnnlab": __version__,
            "images": n_files, "jpeg_mb": data_mb, "decoded_mb": decoded_mb, "params": params, "model_mb": model_mb,
            "model_state_mb": model_state_mb, "baseline_pss_mb": base_mb, "epochs": args.epochs, "batch_size": args.batch_size,
            "image_size": args.image_size,
        }
        print(json.dumps({"meta": meta, "rows": rows}, indent=2))
        if args.markdown:
            m = meta
            print(f"\nRun of {m['date']}; machine: {m['machine']}; Python {m['python']}, torch {m['torch']}, Pillow {m['pillow']}")
            print(f"Data: {m['images']:,} JPEGs, {m['jpeg_mb']:,.0f} MB on disk, {m['decoded_mb']:,.0f} MB decoded at"
                  f" {m['image_size']}x{m['image_size']}x3; seed_cnn {m['params']:,} parameters = {m['model_mb']:.1f} MB,"
                  f" {m['model_state_mb']:.1f} MB with gradients and Adam state; {m['epochs']} epoch(s), batch {m['batch_size']};"
                  f" a process with torch + cnnlab imported and one batch through the model: {m['baseline_pss_mb']:.0f} MB PSS\n")
            print("| mode | workers | images train/val | peak PSS MB (processes) | peak USS MB | peak RSS MB | peak PSS − model state MB |"
                  " train img/s | train + val s | load avg before → after |")
            print("|---|---|---|---|---|---|---|---|---|---|")
            for r in rows:
                print(f"| {r['mode']} | {r['workers']} | {r['train_n']:,}/{r['val_n']:,} | {r['peak_pss_mb']:,.0f} ({r['processes']})"
                      f" | {r['peak_uss_mb']:,.0f} | {r['peak_rss_mb']:,.0f} | {r['beyond_model_mb']:,.0f} | {r['train_img_s']}"
                      f" | {r['seconds']['train']:.0f} | {r['load']} |")
            for r in rows:
                print(f"\n{r['mode']}: peak PSS per tenth of the run (MB): {', '.join(map(str, r['pss_mb_per_tenth_of_run']))}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the generated folder too, unless it is --folder
    return 0


if __name__ == "__main__":
    sys.exit(main())
