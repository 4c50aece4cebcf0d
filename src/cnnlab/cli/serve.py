"""`cnnlab serve MODEL|RUN [--host 127.0.0.1] [--port 8000] [--backend onnxruntime|torch] ...`.

Each ServeConfig field (cnnlab/serve/app.py) is the flag of the same name (`--max-upload-mb` sets
max_upload_bytes), and the service's limits default to ServeConfig's: a flag that is not given is left out.
"""

from __future__ import annotations

import argparse
import math
import sys

# the flags that set the ServeConfig field of the same name (--max-upload-mb sets max_upload_bytes)
_CONFIG_FLAGS = ("backend", "max_batch", "max_delay_ms", "max_queue", "max_pixels", "max_images_per_request", "top_k", "timeout_s",
                 "body_timeout_s", "header_timeout_s", "keep_alive_timeout_s", "max_connections", "threads", "decode_threads", "ort_chunk")


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP (predict, explain, web page, metrics)")
    p.add_argument("model", metavar="MODEL|RUN_DIR", help="run folder or model.safetensors file (local files only)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any free port, printed at start)")
    p.add_argument("--backend", choices=("onnxruntime", "torch"))
    p.add_argument("--max-batch", type=int, help="images per forward pass (dynamic batching)")
    p.add_argument("--max-delay-ms", type=float, help="longest wait to fill a batch")
    p.add_argument("--max-queue", type=int, help="images waiting before requests get 503")
    p.add_argument("--max-upload-mb", type=float, help="request body limit in MiB (413 beyond)")
    p.add_argument("--max-pixels", type=int, help="decoded pixels per image (400 beyond)")
    p.add_argument("--max-images-per-request", type=int, help="images in one request (400 beyond)")
    p.add_argument("--top-k", type=int, help="classes in each answer when the request does not say (?top_k=)")
    p.add_argument("--timeout-s", type=float, help="request timeout (504 beyond)")
    p.add_argument("--body-timeout-s", type=float, help="time to receive a request body (408 beyond)")
    p.add_argument("--header-timeout-s", type=float, help="time to receive a request's line and headers, in total (408 and close beyond)")
    p.add_argument("--keep-alive-timeout-s", type=float, help="an idle connection between requests is closed after this")
    p.add_argument("--max-connections", type=int, help="open connections per worker; a request beyond gets 503")
    p.add_argument("--threads", type=int, help="backend threads per worker (0 = half the cores per worker)")
    p.add_argument("--decode-threads", type=int, help="threads decoding uploads per worker (0 = one per core per worker)")
    p.add_argument("--ort-chunk", type=int, help="images per onnxruntime call within a batch")
    p.add_argument("--workers", type=int, default=1, help="server processes, each with its own model copy")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from cnnlab.errors import ConfigError
    from cnnlab.serve.app import ServeConfig, serve

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be from 0 to 65535 (0: any free port), got {args.port}")
    if args.workers < 1:
        raise ConfigError(f"--workers must be a whole number of at least 1, got {args.workers}")
    given = {k: getattr(args, k) for k in _CONFIG_FLAGS if getattr(args, k) is not None}
    if args.max_upload_mb is not None:
        if not math.isfinite(args.max_upload_mb) or args.max_upload_mb <= 0:
            raise ConfigError(f"--max-upload-mb must be a number of MiB above 0 (e.g. 10), got {args.max_upload_mb:g}")
        given["max_upload_bytes"] = math.ceil(args.max_upload_mb * 2**20)
    cfg = ServeConfig(model=str(args.model), **given).validate().with_thread_defaults(args.workers)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {args.host} exposes the service beyond this machine; there is no authentication", file=sys.stderr)

    def announce(url: str) -> None:
        print(f"serving {args.model} ({cfg.backend}, {cfg.threads} backend + {cfg.decode_threads} decode threads per worker) "
              f"on {url}  (Ctrl+C stops)", flush=True)

    # serve() loads and checks the model, binds (a port in use is one error), and announces once the socket listens.
    serve(cfg, args.host, args.port, args.workers, announce=announce)
    return 0
