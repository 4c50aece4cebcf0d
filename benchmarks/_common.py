"""Pieces shared by the benchmarks that run each side in its own process (seed_vs_keras, inference, decode)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository, put on the children's import path


def run_side(cmd: list[str], env: dict | None = None) -> dict:
    """Run one benchmark side; its result is the JSON object on the last line of its stdout."""
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=3600)
    if p.returncode != 0:
        raise SystemExit(f"benchmark side failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_alternating(module: str, sides: list[str], repeats: int, child_args: list[str]) -> dict[str, list[dict]]:
    """`python -m MODULE --child SIDE *child_args` per side and repeat, the order reversed every other repeat
    so drifting machine load hits every side alike; results per side, in repeat order."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # user paths stay relative to the cwd
    results: dict[str, list[dict]] = {s: [] for s in sides}
    for i in range(repeats):
        for side in sides if i % 2 == 0 else sides[::-1]:
            res = run_side([sys.executable, "-m", module, "--child", side, *child_args], env={"PYTHONPATH": path})
            print(f"repeat {i + 1} {side}: {json.dumps(res)}", file=sys.stderr)
            results[side].append(res)
    return results


def spread(values: list[float], fmt: str = "{:.3g}") -> str:
    """Median (min–max)."""
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def time_single(fn, x, calls: int, warmup: int = 5) -> list[float]:
    """Seconds of each of `calls` single-image calls fn(x[i:i+1]) (cycling through x), after `warmup` untimed ones."""
    import time

    for i in range(warmup):
        fn(x[i : i + 1])
    out = []
    for i in range(calls):
        t0 = time.perf_counter()
        fn(x[i % len(x) : i % len(x) + 1])
        out.append(time.perf_counter() - t0)
    return out
