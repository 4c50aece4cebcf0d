"""What dynamic batching can save in `cnnlab serve`: the CPU cost per image of the server's two big steps.

    python -m benchmarks.serve_parts                         # seed_cnn 100x100, 500x375 JPEG uploads, 1 thread
    python -m benchmarks.serve_parts --size 96 --upload-size 1024x768 --threads 2

Measures, in one process, CPU time (not wall time: the server is CPU-bound under load) per image of
- decoding an upload: `serve.app.decode_upload` (JPEG decode + EXIF + resize to the model's input) on the
  same photo-like JPEGs `benchmarks.serve_load` sends;
- the torch backend's forward pass (`Classifier.predict_proba`, what `--backend torch` runs) on batches of
  1, 8 and 16 images, with the backend's thread count (`cnnlab serve` gives it half the cores: 1 here).
Batching can only shrink the forward pass' share; decoding (and the HTTP layer) cost the same per image
either way. So (decode + forward at batch 1) / (decode + forward at batch 16) bounds the throughput gain
of batching when the server's CPU is the limit, even with a free HTTP layer. Best of --repeats each.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.serve_load import jpeg, make_model, parse_size


def cpu_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=100, help="seed_cnn input size (default 100)")
    ap.add_argument("--upload-size", type=parse_size, default=(500, 375), help="WxH of the JPEG uploads")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (cnnlab serve: half the cores)")
    ap.add_argument("--images", type=int, default=64, help="uploads to decode, and images to classify (>= 1)")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    if args.images < 1 or args.repeats < 1 or args.threads < 1:
        ap.error("--images, --repeats and --threads need values >= 1")

    import torch

    from cnnlab import api
    from cnnlab.engine.device import cpu_description
    from cnnlab.serve.app import decode_upload

    torch.set_num_threads(args.threads)
    clf = api.load(make_model(Path(tempfile.mkdtemp(prefix="cnnlab-serve-parts-")), args.size))
    bodies = [jpeg(*args.upload_size, seed) for seed in range(args.images)]
    n = len(bodies)
    decode = cpu_seconds(lambda: [decode_upload(b, "upload.jpg", clf, 25_000_000) for b in bodies], args.repeats) / n
    x = np.stack([decode_upload(b, "upload.jpg", clf, 25_000_000) for b in bodies])
    forward = {}
    for bs in [b for b in (1, 8, 16) if b <= n]:
        clf.predict_proba(x[:bs])  # warm-up
        forward[bs] = cpu_seconds(lambda: [clf.predict_proba(x[i : i + bs]) for i in range(0, n - n % bs, bs)], args.repeats) / (n - n % bs)
    print(f"{cpu_description()}, torch {torch.__version__}, {args.threads} thread(s), {time.strftime('%Y-%m-%d %H:%M')}; "
          f"seed_cnn {args.size}x{args.size}, {args.upload_size[0]}x{args.upload_size[1]} JPEGs "
          f"(median {int(np.median([len(b) for b in bodies])) // 1000} KB)")
    print("| step | CPU ms per image |")
    print("|---|---|")
    print(f"| decode + resize an upload | {decode * 1e3:.2f} |")
    for bs, s in forward.items():
        print(f"| forward pass, batch {bs} | {s * 1e3:.2f} |")
    top = max(forward)
    bound = (decode + forward[1]) / (decode + forward[top])
    print(f"\nbatching's bound with a free HTTP layer: (decode + forward@1) / (decode + forward@{top}) = {bound:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
