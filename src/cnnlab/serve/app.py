"""The prediction service: FastAPI app over a Classifier or an exported model, with limits, dynamic batching and metrics.

The model is a run folder / model.safetensors (run by onnxruntime, from the same graph `cnnlab export`
writes, or by torch) or an export written by `cnnlab export`: an .onnx file at any precision (fp32, fp16,
int8), a .torchscript file, or an OpenVINO folder / model.xml, each run by its own runtime.

Limits (each answered before any work is done where possible):
  body over `max_upload_bytes` -> 413 · content type not multipart/image -> 415 · not an image, corrupt,
  too many decoded pixels -> 400 with the reason · more images than `max_images_per_request` -> 400 ·
  queue full -> 503 + Retry-After · no answer within `timeout_s` -> 504 · body not received within
  `body_timeout_s` -> 408. Per connection (serve.connections, under `serve`): headers not received within
  `header_timeout_s` -> 408 and close · idle for `keep_alive_timeout_s` -> closed · more than
  `max_connections` open -> 503 + Retry-After.
Models load from local files only (never from URLs).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from PIL import Image, UnidentifiedImageError

from cnnlab._version import __version__
from cnnlab.data import images as image_io
from cnnlab.engine.multilabel import is_multi_label, thresholds_of
from cnnlab.engine.predictor import Classifier
from cnnlab.errors import ConfigError, DataError
from cnnlab.export.runtime import ExportedModel, exported_model_file, load_exported
from cnnlab.serve.batching import DynamicBatcher, QueueFull
from cnnlab.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from cnnlab.serve.metrics import MULTIPROC_ENV, ServerMetrics

RAW_IMAGE_TYPES = ("image/", "application/octet-stream")
COUNTED_FILES = 1024  # multipart file parts counted for the "N images; the limit is M" answer


@dataclass
class ServeConfig:
    model: str
    backend: str = "onnxruntime"  # or "torch"
    max_batch: int = 32
    max_delay_ms: float = 5.0
    max_queue: int = 256  # images waiting; beyond -> 503
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 25_000_000  # decoded pixels per image; beyond -> 400 (decompression bombs)
    max_images_per_request: int = 32
    timeout_s: float = 10.0  # waiting for the model (504 beyond)
    body_timeout_s: float = 30.0  # receiving the request body (408 beyond)
    header_timeout_s: float = 10.0  # receiving a request's line and headers, in total (408 and close beyond; see serve.connections)
    keep_alive_timeout_s: float = 5.0  # an idle connection between requests is closed after this
    max_connections: int = 512  # open connections per worker process; a request beyond -> 503
    top_k: int = 5
    threads: int = 0  # intra-op threads of the backend; 0 = automatic (with_thread_defaults; create_app alone: the backend's default)
    decode_threads: int = 0  # threads decoding uploads off the event loop; 0 = one per core
    ort_chunk: int = 4  # images per onnxruntime call inside one dynamic batch

    def validate(self) -> "ServeConfig":
        """Each bad value is one ConfigError naming its `cnnlab serve` flag (the field's name) and the valid range."""
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", str(self.model)):
            raise ConfigError(f"{self.model}: serve loads local model files only, never URLs — download it yourself and pass the path")
        if self.backend not in ("onnxruntime", "torch"):
            raise ConfigError(f"--backend {self.backend!r}: choose onnxruntime or torch")
        for name, lowest in _WHOLE_NUMBER_FIELDS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
                rule = "0 (automatic) or more" if lowest == 0 else f"a whole number of at least {lowest}"
                raise ConfigError(f"--{name.replace('_', '-')} must be {rule}, got {value!r}")
        if not isinstance(self.max_upload_bytes, int) or self.max_upload_bytes < 1:
            raise ConfigError(f"--max-upload-mb must be a number of MiB above 0, got max_upload_bytes={self.max_upload_bytes!r}")
        for name, (low, low_allowed, high, unit) in _NUMBER_FIELDS.items():
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not number or value > high or value < low or (value == low and not low_allowed):
                rule = f"from {low:g} to {high:g}" if low_allowed else f"above {low:g} and at most {high:g}"
                raise ConfigError(f"--{name.replace('_', '-')} must be {rule} {unit}, got {value!r}")
        return self

    def with_thread_defaults(self, workers: int = 1) -> "ServeConfig":
        """Fill in automatic (0) thread counts for a server process that owns the machine's cores.

        The backend gets half the cores (at least 1) and the decoders one per core, split over
        `workers` processes: the forward pass, the decoding and the event loop run at the same time,
        and a backend that takes every core makes them queue behind it (measured on 2 cores, torch
        backend, one image per forward pass, decoding stubbed out: ~4.3 ms of CPU per request with 2
        intra-op threads, ~3.4 ms with 1 — OpenMP fork/join and spin-waiting). Not applied by
        create_app itself, because torch's thread count is global to the process that embeds the app.
        """
        cores = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        per_worker = max(1, cores // max(1, workers))
        return replace(self, threads=self.threads or max(1, per_worker // 2), decode_threads=self.decode_threads or per_worker)


# the lowest value of each whole-number field; `threads`/`decode_threads` 0 means automatic
_WHOLE_NUMBER_FIELDS = {"max_batch": 1, "max_queue": 1, "max_pixels": 1, "max_images_per_request": 1, "top_k": 1, "ort_chunk": 1,
                        "max_connections": 1, "threads": 0, "decode_threads": 0}
# (lowest, whether the lowest itself is allowed, highest, unit); a day bounds the timeouts (huge ones overflow event-loop timers)
_NUMBER_FIELDS = {"max_delay_ms": (0, True, 60_000, "milliseconds"), "timeout_s": (0, False, 86_400, "seconds"),
                  "body_timeout_s": (0, False, 86_400, "seconds"), "header_timeout_s": (0, False, 86_400, "seconds"),
                  "keep_alive_timeout_s": (0, False, 86_400, "seconds")}


# ------------------------------------------------------------------ backends


class TorchBackend:
    name = "torch"

    def __init__(self, clf: Classifier):
        self.clf = clf

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.clf.predict_proba(x)


class OnnxRuntimeBackend:
    """The same graph `cnnlab export` writes, built in memory and checked against PyTorch at start-up."""

    name = "onnxruntime"

    def __init__(self, clf: Classifier, threads: int = 0, chunk: int = 4):
        import onnxruntime as ort

        self.chunk = chunk
        from cnnlab.export.onnx import build_onnx_bytes, check_images, verify_onnx

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads
        # No spin-waiting after a run: the spinning threads would take the cores the event loop needs
        # to parse and decode the next requests (measured: batching got slower than no batching).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(build_onnx_bytes(clf, label=str(clf.source)), opts, providers=["CPUExecutionProvider"])
        self.max_abs_diff, _ = verify_onnx(clf, self.session, check_images(clf), label=str(clf.source))

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        # Run a dynamic batch in cache-sized chunks: onnxruntime's per-call overhead is tiny, but its
        # per-image cost grows once activations leave the cache (seed_cnn 100x100 on 2 cores: 0.8 ms/img
        # at 1-4 images, 1.8 ms/img at 12). Batching still saves the per-request thread hand-offs.
        x = np.ascontiguousarray(x, dtype=np.uint8)
        chunk = self.chunk
        parts = [self.session.run(["probabilities"], {"images": x[i : i + chunk]})[0] for i in range(0, len(x), chunk)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class ExportedBackend:
    """An exported model (ONNX at any precision, TorchScript, OpenVINO) in its own runtime, checked when it was exported."""

    def __init__(self, model: ExportedModel, chunk: int = 4):
        self.model, self.name = model, model.runtime
        # onnxruntime runs a dynamic batch in cache-sized chunks (see OnnxRuntimeBackend); the others take it whole.
        self.chunk = chunk if model.runtime == "onnxruntime" else None

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if self.chunk is None or len(x) <= self.chunk:
            return self.model.predict_proba(x)
        return np.concatenate([self.model.predict_proba(x[i : i + self.chunk]) for i in range(0, len(x), self.chunk)])


def load_model(cfg: ServeConfig) -> Classifier | ExportedModel:
    """What `cfg.model` names: a run folder or model.safetensors (a Classifier), or an exported model."""
    cfg.validate()
    if exported_model_file(cfg.model) is None:
        return Classifier.load(cfg.model)
    if cfg.backend == "torch":
        raise ConfigError(f"{cfg.model}: an exported model runs in its own runtime — drop --backend torch, or serve the run folder to use torch")
    return load_exported(cfg.model, threads=cfg.threads, spinning=False)


def make_backend(clf: Classifier | ExportedModel, cfg: ServeConfig):
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    if isinstance(clf, ExportedModel):
        return ExportedBackend(clf, cfg.ort_chunk)
    return OnnxRuntimeBackend(clf, cfg.threads, cfg.ort_chunk) if cfg.backend == "onnxruntime" else TorchBackend(clf)


# ------------------------------------------------------------------ decoding uploads


def decode_upload(data: bytes, name: str, clf: Classifier, max_pixels: int) -> np.ndarray:
    """Bytes of one uploaded file -> uint8 (H, W, C) at the model's input size; DataError with the reason."""
    c, h, w = clf.input_shape
    if not data:
        raise image_io.ImageReadError(name, "empty upload (0 bytes)")
    try:
        # Same bomb handling as images._open_checked: Pillow's warning is serialised behind its lock.
        with image_io._OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = image_io.pillow_open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise image_io.ImageReadError(name, "not an image (cannot identify image format)") from None
    except Image.DecompressionBombError:
        raise image_io.ImageReadError(name, "too many pixels; refusing a possible decompression bomb") from None
    except Exception as e:
        raise image_io.ImageReadError(name, f"corrupt image header ({type(e).__name__})") from None
    width, height = im.size
    if width * height > max_pixels:
        raise image_io.ImageReadError(name, f"too many pixels ({width}x{height} = {width * height:,} > limit {max_pixels:,}); refusing a possible decompression bomb")
    out = image_io._decode(name, im, c, (h, w))  # loads, applies EXIF orientation, converts mode; DataError on failure
    if out.size != (w, h):
        out = image_io.fit_image(out, (h, w), model_resize(clf))  # as `cnnlab predict` and training: squash, crop or pad
    arr = np.asarray(out, dtype=np.uint8)
    return np.ascontiguousarray(arr[:, :, None] if arr.ndim == 2 else arr)


def model_resize(clf: Classifier | ExportedModel) -> str:
    """How the model's training images were fitted to its input size; an export's description records it."""
    if isinstance(clf, ExportedModel):
        return (clf.info.get("input") or {}).get("resize") or "squash"  # exports from before --resize: squash
    return clf.resize


def decode_uploads(files: list[tuple[str, bytes]], clf: Classifier, max_pixels: int) -> np.ndarray:
    """Decode every uploaded file into one (N, H, W, C) uint8 array; DataError names the first bad file."""
    return np.stack([decode_upload(data, name, clf, max_pixels) for name, data in files])


async def decode_off_loop(files: list[tuple[str, bytes]], cfg: ServeConfig, clf: Classifier,
                          decode_pool: ThreadPoolExecutor | None) -> np.ndarray:
    """decode_uploads in `decode_pool`; a bad file is a 400 with the reason.

    Pillow releases the GIL while it decodes and resizes, so the event loop keeps parsing other
    requests and answering /healthz meanwhile; the pool's size also bounds how many images are being
    decoded (and held in memory at full size) at once.
    """
    try:
        if decode_pool is None:
            return decode_uploads(files, clf, cfg.max_pixels)
        return await asyncio.get_running_loop().run_in_executor(decode_pool, decode_uploads, files, clf, cfg.max_pixels)
    except DataError as e:
        raise HTTPException(400, str(e)) from None


async def read_uploads(request: Request, cfg: ServeConfig, max_count: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of the uploaded files: multipart file parts, or one raw image body named "body"."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    files: list[tuple[str, bytes]] = []
    if ctype == "multipart/form-data":
        # Parse up to many more files than allowed, so a request over the limit is told how many it sent
        # (the body is within max_upload_bytes already); past that bound it is told "more than".
        counted = max(max_count + 1, COUNTED_FILES)
        try:
            form = await request.form(max_files=counted, max_fields=max_count + 8, max_part_size=cfg.max_upload_bytes)
        except HTTPException:
            raise
        except Exception as e:  # starlette's own HTTPException (400) carries the parser's reason
            reason = getattr(e, "detail", None) or type(e).__name__
            if str(reason).startswith("Too many files"):
                raise HTTPException(400, f"more than {counted} images in one request; the limit is {max_count}") from None
            raise HTTPException(400, f"malformed multipart body ({reason})") from None
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                files.append((value.filename or key, await value.read()))
        if not files:
            raise HTTPException(400, "no image files in the multipart body — send them as file parts (e.g. curl -F file=@cat.jpg)")
    elif ctype.startswith(RAW_IMAGE_TYPES):
        files.append(("body", await request.body()))
    else:
        raise HTTPException(415, f"unsupported content type {ctype or '(none)'!r} — send multipart/form-data or an image/* body")
    if len(files) > max_count:
        raise HTTPException(400, f"{len(files)} images in one request; the limit is {max_count}")
    return files


async def read_images(request: Request, cfg: ServeConfig, clf: Classifier, max_count: int,
                      decode_pool: ThreadPoolExecutor | None = None) -> tuple[list[str], np.ndarray]:
    """Uploaded files decoded (off the event loop when given a pool) into one (N, H, W, C) array."""
    files = await read_uploads(request, cfg, max_count)
    return [n for n, _ in files], await decode_off_loop(files, cfg, clf, decode_pool)


def json_bytes(payload: dict) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()  # as FastAPI's JSONResponse renders


def json_response(payload: dict) -> Response:
    """JSON without FastAPI's response-model validation and encoder pass (the payload is plain already)."""
    return Response(json_bytes(payload), media_type="application/json")


# ------------------------------------------------------------------ ASGI middleware


async def _send_json(send, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


DRAIN_MIN_BYTES = 16 * 1024 * 1024
DRAIN_EXTRA_MAX_BYTES = 64 * 1024 * 1024


def default_drain_cap_bytes(max_upload_bytes: int) -> int:
    """Most bytes of an over-limit body read (and thrown away) before its 413: 4x the limit, at least 16 MiB,
    at most the limit + 64 MiB (default 10 MiB limit: 40 MiB).

    Clients that send the whole body before reading the reply (urllib, requests, httpx sync) see a
    connection reset instead of the 413 when the server closes with their body still unread; reading
    the rest first lets them get the answer. Beyond the cap the server answers and closes (the client
    may then see a reset), so nobody can make it read an unbounded upload.
    """
    return min(max(4 * max_upload_bytes, DRAIN_MIN_BYTES), max_upload_bytes + DRAIN_EXTRA_MAX_BYTES)


class BodyLimit:
    """Refuse bodies over `max_bytes` (413) before the app sees them: by Content-Length, else while streaming.

    The whole body must arrive within `timeout_s` (else 408), so a slow or stalled client cannot hold a
    request open forever. An over-limit body is read and discarded up to `drain_cap_bytes` in all (within
    the same deadline) before the 413, so clients that send it all before reading the reply get the 413
    rather than a reset; a body longer than that (or one behind `Expect: 100-continue`, not yet sent) gets
    the 413 at once with `Connection: close`.
    """

    def __init__(self, app, max_bytes: int, timeout_s: float, drain_cap_bytes: int | None = None):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s
        self.drain_cap_bytes = default_drain_cap_bytes(max_bytes) if drain_cap_bytes is None else drain_cap_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        deadline = time.monotonic() + self.timeout_s
        if length is not None:
            if not length.isdigit():
                return await _send_json(send, 400, "invalid Content-Length header")
            if int(length) > self.max_bytes:
                detail = f"request body of {int(length):,} bytes is over the limit of {self.max_bytes:,} bytes"
                if int(length) > self.drain_cap_bytes or headers.get(b"expect", b"").lower() == b"100-continue":
                    return await _send_json(send, 413, detail, [(b"connection", b"close")])
                return await self._refuse_over_limit(receive, send, 0, deadline, detail)
        chunks, total = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return await _send_json(send, 408, f"request body not received within {self.timeout_s:g} s", [(b"connection", b"close")])
            if message["type"] == "http.disconnect":
                return
            total += len(message.get("body", b""))
            if total > self.max_bytes:
                detail = f"request body is over the limit of {self.max_bytes:,} bytes"
                if not message.get("more_body", False):
                    return await _send_json(send, 413, detail)
                return await self._refuse_over_limit(receive, send, total, deadline, detail)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _refuse_over_limit(self, receive, send, read: int, deadline: float, detail: str) -> None:
        """Read and discard the rest of an over-limit body (`read` bytes of it already in) up to
        `drain_cap_bytes` and the deadline, then answer 413 — with `Connection: close` unless it all came in."""
        done = False
        while not done and read <= self.drain_cap_bytes:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
            if message["type"] == "http.disconnect":
                return
            read += len(message.get("body", b""))
            done = not message.get("more_body", False)
        await _send_json(send, 413, detail, [] if done else [(b"connection", b"close")])


class Metered:
    """Count every response (including 413s from BodyLimit) by route and status; time it."""

    KNOWN = ("/", "/healthz", "/metrics", "/openapi.json", "/v1/model", "/v1/predict", "/v1/explain")

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"] if scope["path"] in self.KNOWN else ("/static" if scope["path"].startswith("/static/") else "other")
            self.metrics.observe_request(scope["method"], path, status, time.perf_counter() - start)


class RawPredictFastPath:
    """`POST /v1/predict` with one raw image body and at most a plain `top_k`: answered without FastAPI.

    The common request of a busy service. FastAPI's routing, dependency solving and middleware stack
    cost about as much event-loop time per request as everything else the loop does for it together
    (measured at 16 clients with decoding and model stubbed out: ~0.5 ms of server CPU per request
    through the route, ~0.25 ms here); that time is better left to decoding and batches. Anything else
    (multipart bodies, other or invalid query parameters, other content types) goes on to the FastAPI
    route, and both call the same `predict(files, top_k)`, so they answer alike (tested).
    """

    def __init__(self, app, predict, default_top_k: int):
        self.app, self.predict, self.default_top_k = app, predict, default_top_k

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/v1/predict":
            top_k = _plain_top_k(scope["query_string"], self.default_top_k)
            ctype = next((v for k, v in scope["headers"] if k == b"content-type"), b"").decode("latin-1")
            if top_k is not None and ctype.split(";")[0].strip().lower().startswith(RAW_IMAGE_TYPES):
                chunks = []
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunks.append(message.get("body", b""))
                    if not message.get("more_body", False):
                        break
                try:
                    payload = await self.predict([("body", b"".join(chunks))], top_k)
                except HTTPException as e:
                    return await _send_bytes(send, e.status_code, json_bytes({"detail": e.detail}), e.headers)
                return await _send_bytes(send, 200, json_bytes(payload))
        return await self.app(scope, receive, send)


def _plain_top_k(query: bytes, default: int) -> int | None:
    """top_k from a query string that is empty or exactly `top_k=N` with 1 <= N <= 1000; else None."""
    if not query:
        return default
    name, _, value = query.partition(b"=")
    if name != b"top_k" or not value.isdigit() or len(value) > 4 or not 1 <= int(value) <= 1000:
        return None
    return int(value)


async def _send_bytes(send, status: int, body: bytes, headers: dict | None = None) -> None:
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json"), *extra]})
    await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------ the app

_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    },
}


def create_app(cfg: ServeConfig, clf: Classifier | ExportedModel | None = None, backend=None, metrics_dir: str | None = None) -> FastAPI:
    """The ASGI app. `clf`/`backend` may be given (tests inject a slow backend); otherwise loaded from cfg.model.

    `metrics_dir`: the metrics folder shared by the worker processes of one server (see serve.metrics), or None.
    """
    cfg.validate()
    clf = clf if clf is not None else load_model(cfg)
    backend = backend if backend is not None else make_backend(clf, cfg)
    backend_name = getattr(backend, "name", type(backend).__name__)
    model_version = clf.meta.get("cnnlab_version") or __version__
    model_format = (clf.format, clf.precision) if isinstance(clf, ExportedModel) else ("safetensors", "fp32")
    explain_lock = threading.Lock()  # Grad-CAM hooks one model: one explanation at a time
    metrics = ServerMetrics(metrics_dir)
    batcher = DynamicBatcher(backend.predict_proba, cfg.max_batch, cfg.max_delay_ms, cfg.max_queue, on_batch=metrics.observe_batch,
                             on_queue=metrics.set_queue_depth)
    decode_pool = ThreadPoolExecutor(cfg.decode_threads or os.cpu_count() or 1, thread_name_prefix="cnnlab-decode")

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()
        decode_pool.shutdown(wait=False, cancel_futures=True)
        metrics.close()

    app = FastAPI(title="cnnlab prediction service", version=__version__, lifespan=lifespan,
                  description=f"Model {clf.meta['model']} with classes {', '.join(clf.class_names)}.")
    app.state.cfg, app.state.clf, app.state.batcher, app.state.metrics = cfg, clf, batcher, metrics

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model_info() -> dict:
        c, h, w = clf.input_shape
        return {"name": clf.meta["model"], "classes": clf.class_names, "input_shape": {"channels": c, "height": h, "width": w},
                "version": model_version, "backend": backend_name, "format": model_format[0], "precision": model_format[1],
                "max_batch": cfg.max_batch,
                "max_upload_bytes": cfg.max_upload_bytes, "max_images_per_request": cfg.max_images_per_request,
                "timeout_s": cfg.timeout_s, "body_timeout_s": cfg.body_timeout_s, "header_timeout_s": cfg.header_timeout_s,
                "keep_alive_timeout_s": cfg.keep_alive_timeout_s, "max_connections": cfg.max_connections,
                **({"task": "multi_label", "thresholds": dict(zip(clf.class_names, thresholds_of(clf.meta).tolist()))}
                   if is_multi_label(clf.meta) else {})}  # multi-label: /v1/predict lists every label at or above its threshold

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def predict_files(files: list[tuple[str, bytes]], top_k: int) -> dict:
        """Decode, batch, answer: the one implementation behind both ways into /v1/predict."""
        x = await decode_off_loop(files, cfg, clf, decode_pool)
        try:
            probs = await asyncio.wait_for(batcher.submit(x), cfg.timeout_s)
        except QueueFull as e:
            raise HTTPException(503, f"server busy: {e}; retry shortly", headers={"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            raise HTTPException(504, f"prediction took longer than {cfg.timeout_s:g} s") from None
        return {"model": clf.meta["model"], "predictions": [{"filename": n, **clf.describe(p, top_k)} for (n, _), p in zip(files, probs)]}

    @app.post("/v1/predict", openapi_extra={"requestBody": _UPLOAD_BODY}, response_class=JSONResponse)
    async def predict(request: Request, top_k: int = Query(cfg.top_k, ge=1, le=1000)) -> Response:
        return json_response(await predict_files(await read_uploads(request, cfg, cfg.max_images_per_request), top_k))

    @app.post("/v1/explain", openapi_extra={"requestBody": _UPLOAD_BODY},
              responses={200: {"content": {"image/png": {}, "application/json": {}}}})
    async def explain(request: Request, format: str = Query("png", pattern="^(png|json)$"), class_name: str | None = Query(None, max_length=200),
                      method: str = Query("gradcam", pattern=r"^(gradcam|gradcam\+\+)$")):
        try:
            from cnnlab.insight.gradcam import explain_image
        except ImportError:
            raise HTTPException(501, "Grad-CAM is not available in this installation") from None
        if not isinstance(clf, Classifier):
            raise HTTPException(501, f"Grad-CAM needs the PyTorch model; this server runs an exported {model_format[0]} model — serve the run folder for explanations")
        if class_name is not None and class_name not in clf.class_names:
            raise HTTPException(400, f"unknown class {class_name!r} — choose one of: {', '.join(clf.class_names)}")
        names, x = await read_images(request, cfg, clf, 1, decode_pool)

        def run():
            with explain_lock:
                return explain_image(clf, x[0], class_name=class_name, method=method)

        try:
            result = await asyncio.wait_for(asyncio.to_thread(run), cfg.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"explanation took longer than {cfg.timeout_s:g} s") from None
        png = io.BytesIO()
        Image.fromarray(result["overlay"]).save(png, format="PNG")
        headers = {"X-Class": _header_safe(result["class"]), "X-Probability": f"{result['probability']:.6f}", "X-Layer": _header_safe(result["layer"])}
        if format == "png":
            return Response(png.getvalue(), media_type="image/png", headers=headers)
        return JSONResponse({"filename": names[0], "class": result["class"], "probability": result["probability"], "layer": result["layer"],
                             "overlay_png_base64": base64.b64encode(png.getvalue()).decode()})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(_static("index.html"))

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        types = {".js": "text/javascript", ".css": "text/css"}
        if name not in ("app.js", "style.css"):
            raise HTTPException(404, "not found")
        return Response(_static(name), media_type=types[Path(name).suffix] + "; charset=utf-8")

    return Metered(BodyLimit(RawPredictFastPath(app, predict_files, cfg.top_k), cfg.max_upload_bytes, cfg.body_timeout_s), metrics)


def _header_safe(text: str) -> str:
    return str(text).encode("ascii", "backslashreplace").decode()[:200]


def _static(name: str) -> str:
    return resources.files("cnnlab.serve").joinpath("static", name).read_text(encoding="utf-8")


CONFIG_ENV = "CNNLAB_SERVE_CONFIG"


def app_from_env():
    """uvicorn factory for --workers N: each worker process builds its own app from the JSON config and
    records its metrics in the server's shared metrics folder."""
    return create_app(ServeConfig(**json.loads(os.environ[CONFIG_ENV])), metrics_dir=os.environ[MULTIPROC_ENV])


def serve(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, log_level: str = "warning", app=None,
          announce=None) -> None:
    """Run the service under uvicorn (uvloop and httptools when installed); `app` if already built from `cfg`.

    In this order, so that each failure is one clear error and nothing claims to serve too early: load
    and check the model (a bad file fails before anything is bound; each worker loads its own copy
    later), bind host:port (in use -> ConfigError), listen, call `announce(url)` (port 0: the port the
    system picked), serve until stopped. Connections get the limits of serve.connections (header
    deadline, keep-alive timeout, connection cap).
    With several workers, their metrics go to a fresh temp folder made here before they start (their
    prometheus_client reads PROMETHEUS_MULTIPROC_DIR when imported) and removed when the server stops.
    """
    from cnnlab.serve.connections import bind_listener, listen_url, run_uvicorn, uvicorn_config

    cfg = cfg.with_thread_defaults(workers).validate()
    limits = dict(header_timeout_s=cfg.header_timeout_s, keep_alive_timeout_s=cfg.keep_alive_timeout_s, max_connections=cfg.max_connections)
    if workers > 1:
        load_model(cfg)
        config = uvicorn_config("cnnlab.serve.app:app_from_env", factory=True, workers=workers, log_level=log_level, **limits)
    else:
        config = uvicorn_config(app if app is not None else create_app(cfg), log_level=log_level, **limits)
    sock = bind_listener(host, port)
    metrics_dir, saved = None, {}
    try:
        if workers > 1:
            metrics_dir = tempfile.mkdtemp(prefix="cnnlab-metrics-")
            saved = {k: os.environ.get(k) for k in (CONFIG_ENV, MULTIPROC_ENV)}
            os.environ[CONFIG_ENV] = json.dumps(asdict(cfg))
            os.environ[MULTIPROC_ENV] = metrics_dir
        url = listen_url(sock)
        if announce is not None:
            announce(url)
        run_uvicorn(config, sock)
    finally:
        sock.close()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
