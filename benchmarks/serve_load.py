"""Load test of `cnnlab serve` on loopback: dynamic batching vs --max-batch 1.

    python -m benchmarks.serve_load [--clients 16] [--requests 1000 | --quick] [--repeats 1]
        [--backend torch|onnxruntime] [--upload-size 500x375 | --images DIR] [--image-size 100]
        [--max-batch 32] [--max-delay-ms 5] [--model RUN_OR_FILE] [--max-seconds 300] [--json]

Each configuration starts its own server process (127.0.0.1, free port), then C clients each send
R requests (one JPEG per request as a raw `image/jpeg` body, keep-alive HTTP/1.1) as fast as answers
come back. The default is the issue's full run: 16 clients x 1000 requests, "real-sized" uploads
(synthetic photo-like JPEGs of 500x375, the most common size in the cats-vs-dogs set; `--images DIR`
sends real files instead) to a freshly initialised seed_cnn 100x100 (speed does not depend on the
weights). `--quick` sends 200 requests per client.

The clients are one lean asyncio.Protocol per connection in this process (prebuilt request bytes, the
response parsed with two `bytes.find`s), so the load generator takes little of the CPU the server needs;
its CPU time is measured and reported (`client_cpu_share`). With --repeats N the two configurations
alternate (A B B A ...), so drifting load from other processes hits both. Every measurement records the
load average before and after and `others_cores`: the CPU used by processes other than server and
client during the measurement (from /proc/stat), i.e. how loaded the machine was.

Bounded: a configuration stops after --max-seconds even if not all requests were sent (`requests`
vs `planned` says so); only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def jpeg(width: int, height: int, seed: int) -> bytes:
    """A photo-like JPEG: smooth shapes plus fine texture, so it compresses (and decodes) like a photo."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 25 + 2, width // 25 + 2, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), dtype=np.int16)
    texture = rng.normal(0, 3, (height, width, 1))  # ~47 KB at 500x375, like the real photos (median 44 KB)
    img = Image.fromarray(np.clip(base + texture, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def upload_bodies(args) -> list[bytes]:
    if args.images:
        files = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[:64]
        if not files:
            raise SystemExit(f"{args.images}: no .jpg files")
        return [p.read_bytes() for p in files]
    w, h = args.upload_size
    return [jpeg(w, h, s) for s in range(32)]


# ------------------------------------------------------------------ the load generator


class Connection(asyncio.Protocol):
    """One keep-alive connection sending its requests one after another (closed loop)."""

    def __init__(self, requests: list[bytes], n: int, deadline: float, latencies: list, statuses: list, done: asyncio.Future):
        self.requests, self.n, self.deadline = requests, n, deadline
        self.latencies, self.statuses, self.done = latencies, statuses, done
        self.sent, self.received, self.buf, self.t0, self.transport = 0, 0, b"", 0.0, None

    def connection_made(self, transport):
        self.transport = transport
        self._send()

    def _send(self):
        if self.sent >= self.n or time.perf_counter() > self.deadline:
            self.transport.close()
            return
        self.t0 = time.perf_counter()
        self.transport.write(self.requests[self.sent % len(self.requests)])
        self.sent += 1

    def data_received(self, data: bytes):
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].lower()
        i = head.find(b"content-length:")
        if i < 0:
            self.statuses.append(-1)  # this server always sends Content-Length
            self.transport.close()
            return
        j = head.find(b"\r\n", i)
        length = int(head[i + 15 : j if j >= 0 else len(head)])
        if len(self.buf) < end + 4 + length:
            return
        self.latencies.append(time.perf_counter() - self.t0)
        self.statuses.append(int(self.buf[9:12]))
        self.received += 1
        self.buf = self.buf[end + 4 + length :]
        self._send()

    def connection_lost(self, exc):
        if self.sent > self.received:
            self.statuses.append(-2)  # connection closed with a request unanswered
        if not self.done.done():
            self.done.set_result(None)


async def load(port: int, bodies: list[bytes], clients: int, requests: int, max_seconds: float) -> tuple[list, list]:
    loop = asyncio.get_running_loop()
    deadline = time.perf_counter() + max_seconds
    latencies, statuses, waits = [], [], []
    for c in range(clients):
        reqs = [b"POST /v1/predict?top_k=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                + f"Content-Length: {len(b)}\r\n\r\n".encode() + b for b in bodies[c:] + bodies[:c]]
        done = loop.create_future()
        await loop.create_connection(lambda: Connection(reqs, requests, deadline, latencies, statuses, done), "127.0.0.1", port)
        waits.append(done)
    await asyncio.gather(*waits)
    return latencies, statuses


# ------------------------------------------------------------------ CPU accounting


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime (all threads)


def machine_busy_s() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return (sum(v[:8]) - idle) / CLK_TCK


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------ one configuration


def run_config(model: Path, max_batch: int, bodies: list[bytes], args) -> dict:
    port = free_port()
    cmd = [sys.executable, "-m", "cnnlab", "serve", str(model), "--port", str(port), "--backend", args.backend,
           "--max-batch", str(max_batch), "--max-delay-ms", str(args.max_delay_ms), "--max-queue", "4096",
           *shlex.split(args.server_args)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(1200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit(f"server exited: {server.stderr.read().decode()[-2000:]}")
                time.sleep(0.1)
        # warm-up (first forward passes at several batch sizes, allocator) is not measured
        asyncio.run(load(port, bodies, args.clients, 20, 60))
        load_before = os.getloadavg()[0]
        cpu0 = (self_cpu_s(), proc_cpu_s(server.pid), machine_busy_s())
        t0 = time.perf_counter()
        latencies, statuses = asyncio.run(load(port, bodies, args.clients, args.requests, args.max_seconds))
        wall = time.perf_counter() - t0
        cpu1 = (self_cpu_s(), proc_cpu_s(server.pid), machine_busy_s())
        load_after = os.getloadavg()[0]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.terminate()
        server.wait(30)
    client_s, server_s, busy_s = (b - a for a, b in zip(cpu0, cpu1))
    lat = np.array(latencies) * 1000
    batch = {ln.split()[0]: float(ln.split()[-1]) for ln in metrics.splitlines() if ln.startswith("cnnlab_batch_size_")}
    errors = sum(1 for s in statuses if s != 200)
    return {"max_batch": max_batch, "requests": len(latencies), "planned": args.clients * args.requests, "errors": errors,
            "wall_s": round(wall, 2), "requests_per_s": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "mean_batch": round(batch["cnnlab_batch_size_sum"] / max(batch["cnnlab_batch_size_count"], 1), 2),
            "server_cpu_ms_per_request": round(server_s * 1000 / max(len(latencies), 1), 2), "server_cores": round(server_s / wall, 2), "client_cores": round(client_s / wall, 2),
            "client_cpu_share": round(client_s / max(client_s + server_s, 1e-9), 3),
            "others_cores": round(max(0.0, busy_s - client_s - server_s) / wall, 2),
            "load_1m_before": round(load_before, 2), "load_1m_after": round(load_after, 2)}


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h or w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=1000, help="requests per client (default: the issue's 1000)")
    ap.add_argument("--quick", action="store_true", help="shorter run: 200 requests per client")
    ap.add_argument("--repeats", type=int, default=1, help="alternating A/B rounds (A B B A ...)")
    ap.add_argument("--backend", choices=("onnxruntime", "torch"), default="torch")
    ap.add_argument("--upload-size", type=parse_size, default=(500, 375), help="WxH of the synthetic JPEG uploads")
    ap.add_argument("--images", default=None, help="send these .jpg files (a folder, searched recursively) instead")
    ap.add_argument("--image-size", type=int, default=100, help="the model's input size")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-delay-ms", type=float, default=5.0)
    ap.add_argument("--server-args", default="", help="extra `cnnlab serve` arguments for both configurations")
    ap.add_argument("--model", default=None, help="run folder or model file (default: fresh seed_cnn)")
    ap.add_argument("--max-seconds", type=float, default=300, help="stop each configuration after this long")
    ap.add_argument("--json", action="store_true", help="only JSON lines, no table")
    args = ap.parse_args()
    if args.quick:
        args.requests = 200
    bodies = upload_bodies(args)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else make_model(Path(tmp), args.image_size)
        for r in range(args.repeats):
            order = [args.max_batch, 1] if r % 2 == 0 else [1, args.max_batch]
            for mb in order:
                res = run_config(model, mb, bodies, args)
                res["round"] = r
                results.append(res)
                print(json.dumps(res), flush=True)
    import onnxruntime
    import torch

    from cnnlab.engine.device import cpu_description

    batched = [r for r in results if r["max_batch"] != 1]
    single = [r for r in results if r["max_batch"] == 1]
    ratios = [b["requests_per_s"] / s["requests_per_s"] for b, s in zip(batched, single)]
    info = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": cpu_description(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "clients": args.clients, "requests_per_client": args.requests, "backend": args.backend,
            "uploads": args.images or f"{args.upload_size[0]}x{args.upload_size[1]} synthetic JPEG",
            "upload_kb_mean": round(sum(map(len, bodies)) / len(bodies) / 1024, 1), "model": f"seed_cnn {args.image_size}x{args.image_size}",
            "max_delay_ms": args.max_delay_ms, "server_args": args.server_args,
            "speedup_per_round": [round(x, 2) for x in ratios], "speedup_median": round(statistics.median(ratios), 2)}
    print(json.dumps(info))
    if not args.json:
        print("\n| round | batching | requests | errors | req/s | p50 ms | p99 ms | mean batch | server cores | client cores | others' cores | load 1m before/after |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in results:
            mode = f"`--max-batch {r['max_batch']} --max-delay-ms {args.max_delay_ms:g}`" if r["max_batch"] != 1 else "`--max-batch 1`"
            print(f"| {r['round'] + 1} | {mode} | {r['requests']} | {r['errors']} | {r['requests_per_s']} | {r['p50_ms']} | {r['p99_ms']} | "
                  f"{r['mean_batch']} | {r['server_cores']} | {r['client_cores']} | {r['others_cores']} | {r['load_1m_before']} / {r['load_1m_after']} |")
        print(f"\nbatching speed-up (req/s): {', '.join(f'{x:.2f}x' for x in ratios)} (median {statistics.median(ratios):.2f}x)")


if __name__ == "__main__":
    main()
