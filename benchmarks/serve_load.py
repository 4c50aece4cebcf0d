"""Load test of `cnnlab serve` on loopback: dynamic batching vs --max-batch 1.

    .venv/bin/python benchmarks/serve_load.py [--clients 16] [--requests 1000] [--image-size 100]
        [--backend onnxruntime] [--model RUN_OR_FILE] [--max-seconds 120]

Each configuration starts its own server process (127.0.0.1, free port), then C clients each send
R requests (one JPEG of the model's size per request, keep-alive HTTP/1.1) as fast as answers come
back. Reports requests/s, p50/p99 latency and errors. Bounded: a configuration stops after
--max-seconds even if not all requests were sent (the report says how many were). Without --model a
freshly initialised seed_cnn is used (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(folder: Path, size: int) -> Path:
    from cnnlab.engine.model_file import model_metadata, save_model_file
    from cnnlab.models import create_model

    model = create_model("seed_cnn", 2, 3, (size, size))
    path = folder / "seed_cnn.safetensors"
    save_model_file(path, model, model_metadata(model, ["cat", "dog"], (3, size, size)))
    return path


def jpeg(size: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size // 10 + 1, size // 10 + 1, 3), dtype=np.uint8)  # smooth, photo-like content
    img = Image.fromarray(small).resize((size, size), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


async def client(port: int, bodies: list[bytes], n: int, latencies: list, errors: list, deadline: float) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i in range(n):
            if time.perf_counter() > deadline:
                return
            body = bodies[i % len(bodies)]
            head = (f"POST /v1/predict?top_k=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            t0 = time.perf_counter()
            writer.write(head + body)
            await writer.drain()
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            status = int(status_line.split()[1])
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


def run_config(model: Path, max_batch: int, args) -> dict:
    port = free_port()
    cmd = [sys.executable, "-m", "cnnlab", "serve", str(model), "--port", str(port), "--backend", args.backend,
           "--max-batch", str(max_batch), "--max-delay-ms", str(args.max_delay_ms), "--max-queue", "4096"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit(f"server exited: {server.stderr.read().decode()[-2000:]}")
                time.sleep(0.1)
        bodies = [jpeg(args.image_size, s) for s in range(32)]
        latencies, errors = [], []

        async def main():
            deadline = time.perf_counter() + args.max_seconds
            await asyncio.gather(*(client(port, bodies[c:] + bodies[:c], args.requests, latencies, errors, deadline) for c in range(args.clients)))

        # warm-up (first forward passes, allocator) is not measured
        asyncio.run(client_warmup(port, bodies))
        t0 = time.perf_counter()
        asyncio.run(main())
        wall = time.perf_counter() - t0
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.terminate()
        server.wait(30)
    lat = np.array(latencies) * 1000
    batches = [ln for ln in metrics.splitlines() if ln.startswith("cnnlab_batch_size_sum") or ln.startswith("cnnlab_batch_size_count")]
    bsum, bcount = (float(b.split()[-1]) for b in batches)
    return {"max_batch": max_batch, "requests": len(latencies), "planned": args.clients * args.requests, "wall_s": round(wall, 2),
            "requests_per_s": round(len(latencies) / wall, 1), "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2), "errors": len(errors), "mean_batch": round(bsum / max(bcount, 1), 2)}


async def _warm(port, bodies):
    lat, err = [], []
    await client(port, bodies, 20, lat, err, time.perf_counter() + 30)


def client_warmup(port, bodies):
    return _warm(port, bodies)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=1000, help="requests per client")
    ap.add_argument("--image-size", type=int, default=100)
    ap.add_argument("--backend", choices=("onnxruntime", "torch"), default="onnxruntime")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-delay-ms", type=float, default=5.0)
    ap.add_argument("--model", default=None, help="run folder or model file (default: fresh seed_cnn)")
    ap.add_argument("--max-seconds", type=float, default=120, help="stop each configuration after this long")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else make_model(Path(tmp), args.image_size)
        results = [run_config(model, args.max_batch, args), run_config(model, 1, args)]
    import onnxruntime
    import torch

    info = {"cpus": os.cpu_count(), "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "clients": args.clients,
            "image": f"{args.image_size}x{args.image_size} JPEG", "backend": args.backend, "max_delay_ms": args.max_delay_ms}
    for r in results:
        print(json.dumps(r))
    print(json.dumps(info))
    print(f"batching speed-up: {results[0]['requests_per_s'] / results[1]['requests_per_s']:.2f}x requests/s")


if __name__ == "__main__":
    main()
