"""`cnnlab serve MODEL|RUN [--host 127.0.0.1] [--port 8000] [--backend onnxruntime|torch] ...`."""

from __future__ import annotations

import sys


def add_commands(subparsers, data_subparsers) -> None:
    from cnnlab.serve.app import ServeConfig

    d = ServeConfig(model="")
    p = subparsers.add_parser("serve", help="serve a model over HTTP (predict, explain, web page, metrics)")
    p.add_argument("model", metavar="MODEL|RUN_DIR", help="run folder or model.safetensors file (local files only)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", choices=("onnxruntime", "torch"), default=d.backend)
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="images per forward pass (dynamic batching)")
    p.add_argument("--max-delay-ms", type=float, default=d.max_delay_ms, help="longest wait to fill a batch")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="images waiting before requests get 503")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_bytes / 2**20, help="request body limit (413 beyond)")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="decoded pixels per image (400 beyond)")
    p.add_argument("--timeout-s", type=float, default=d.timeout_s, help="request timeout (504 beyond)")
    p.add_argument("--body-timeout-s", type=float, default=d.body_timeout_s, help="time to receive a request body (408 beyond)")
    p.add_argument("--threads", type=int, default=0, help="backend threads per worker (0 = half the cores per worker)")
    p.add_argument("--decode-threads", type=int, default=0, help="threads decoding uploads per worker (0 = one per core per worker)")
    p.add_argument("--ort-chunk", type=int, default=d.ort_chunk, help="images per onnxruntime call within a batch")
    p.add_argument("--workers", type=int, default=1, help="server processes, each with its own model copy")
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    from cnnlab.errors import ConfigError
    from cnnlab.serve.app import ServeConfig, create_app, serve

    if not 0 <= args.port <= 65535 or args.workers < 1:
        raise ConfigError(f"--port must be 0..65535 and --workers >= 1 (got {args.port}, {args.workers})")
    cfg = ServeConfig(model=str(args.model), backend=args.backend, max_batch=args.max_batch, max_delay_ms=args.max_delay_ms,
                      max_queue=args.max_queue, max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                      timeout_s=args.timeout_s, body_timeout_s=args.body_timeout_s, threads=args.threads,
                      decode_threads=args.decode_threads, ort_chunk=args.ort_chunk).validate().with_thread_defaults(args.workers)
    # Load and verify now, so a bad model file is a clean error before binding.
    app = create_app(cfg) if args.workers == 1 else None
    if app is None:
        from cnnlab.engine.predictor import Classifier

        Classifier.load(cfg.model)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {args.host} exposes the service beyond this machine; there is no authentication", file=sys.stderr)
    print(f"serving {args.model} ({args.backend}, {cfg.threads} backend + {cfg.decode_threads} decode threads per worker) "
          f"on http://{args.host}:{args.port}/  (Ctrl+C stops)", flush=True)
    serve(cfg, args.host, args.port, args.workers, app=app)
    return 0
