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
