"""The load generator of benchmarks/serve_load.py against a real server: it counts every answer and every error."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from cnnlab.serve.app import ServeConfig, create_app
from conftest import two_class_images
from test_serve import live_server, png_bytes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `benchmarks`


def test_load_generator_counts_answers_and_errors(trained_run):
    from benchmarks.serve_load import load

    run, _ = trained_run
    x, _ = two_class_images(1, 32, seed=7)
    with live_server(create_app(ServeConfig(model=str(run), backend="torch"))) as url:
        port = int(url.rsplit(":", 1)[1])
        # client 0 sends good, bad, good; client 1 bad, good, bad (each starts at its own offset)
        latencies, statuses = asyncio.run(load(port, [png_bytes(x[0]), b"not an image"], clients=2, requests=3, max_seconds=60))
    assert len(latencies) == 6 and all(t > 0 for t in latencies)
    assert sorted(statuses) == [200, 200, 200, 400, 400, 400]


def test_serve_parts_reports_decode_and_forward_costs_and_the_bound(capsys):
    from benchmarks.serve_parts import main

    assert main(["--size", "32", "--upload-size", "120x90", "--images", "8", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in out.splitlines() if line.startswith("| ") and "step" not in line}
    assert set(rows) == {"decode + resize an upload", "forward pass, batch 1", "forward pass, batch 8"}  # 16 > 8 images: skipped
    assert all(v > 0 for v in rows.values())
    bound = float(out.rsplit("= ", 1)[1].strip().rstrip("x"))
    expected = (rows["decode + resize an upload"] + rows["forward pass, batch 1"]) / (rows["decode + resize an upload"] + rows["forward pass, batch 8"])
    assert abs(bound - expected) <= 0.1 * expected  # the printed bound is the ratio of the printed costs (rounded to 0.01 ms)
