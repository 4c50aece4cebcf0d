"""HTTP service against a real uvicorn server on loopback: endpoints, every limit, batching, metrics."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from cnnlab.engine.predictor import Classifier
from cnnlab.serve.app import ServeConfig, create_app
from conftest import two_class_images
from test_errors import assert_clean_error


@contextmanager
def running(server: uvicorn.Server, **run_kwargs):
    """`server.run(**run_kwargs)` in a thread, started (polled, never timed) until the block ends."""
    thread = threading.Thread(target=server.run, kwargs=run_kwargs, daemon=True)
    thread.start()
    for _ in range(600):
        if server.started or not thread.is_alive():
            break
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(30)


@contextmanager
def live_server(app):
    """Run `app` under uvicorn on 127.0.0.1 (free port) in a thread; yields the base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    with running(server):
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


def png_bytes(img: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def images32():
    x, y = two_class_images(4, 32, seed=7)
    return x, y


@pytest.fixture(scope="module")
def torch_server(trained_run):
    run, _ = trained_run
    with live_server(create_app(ServeConfig(model=str(run), backend="torch", max_upload_bytes=200_000, max_pixels=10_000, max_images_per_request=3))) as url:
        yield url


class GatedBackend:
    """A backend that waits for `gate` before answering and records batch sizes (deterministic batching tests)."""

    name = "gated"

    def __init__(self, clf: Classifier):
        self.clf, self.gate, self.sizes, self.entered = clf, threading.Event(), [], threading.Event()

    def predict_proba(self, x):
        self.sizes.append(len(x))
        self.entered.set()
        self.gate.wait(30)
        return self.clf.predict_proba(x)


def wait_for(cond, what: str) -> None:
    for _ in range(400):
        if cond():
            return
        time.sleep(0.025)
    raise AssertionError(f"gave up waiting for {what}")


def test_model_health_openapi(torch_server):
    m = httpx.get(f"{torch_server}/v1/model").json()
    assert m["name"] == "seed_cnn" and m["classes"] == ["circle", "square"] and m["backend"] == "torch"
    assert m["input_shape"] == {"channels": 3, "height": 32, "width": 32} and m["version"]
    assert httpx.get(f"{torch_server}/healthz").json() == {"status": "ok"}
    paths = httpx.get(f"{torch_server}/openapi.json").json()["paths"]
    assert {"/v1/predict", "/v1/explain", "/v1/model", "/healthz", "/metrics"} <= set(paths)
    page = httpx.get(f"{torch_server}/")
    assert page.status_code == 200 and "cnnlab classifier" in page.text and "http" not in page.text.split("<body>")[1].replace("http-equiv", "")
    assert httpx.get(f"{torch_server}/static/app.js").status_code == 200
    assert httpx.get(f"{torch_server}/static/..%2Fapp.py").status_code == 404


def test_predict_multipart_and_raw_match_classifier(torch_server, trained_run, images32):
    run, _ = trained_run
    x, _ = images32
    oracle = Classifier.load(run).predict_proba(x[:2])
    files = [("file", ("a.png", png_bytes(x[0]), "image/png")), ("file", ("b.png", png_bytes(x[1]), "image/png"))]
    r = httpx.post(f"{torch_server}/v1/predict?top_k=2", files=files)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["filename"] for p in preds] == ["a.png", "b.png"]
    for p, o in zip(preds, oracle):
        assert p["class"] == ["circle", "square"][int(o.argmax())]
        assert abs(p["probability"] - o.max()) < 1e-5 and len(p["top_k"]) == 2
    raw = httpx.post(f"{torch_server}/v1/predict", content=png_bytes(x[0]), headers={"content-type": "image/png"})
    assert raw.status_code == 200 and abs(raw.json()["predictions"][0]["probability"] - oracle[0].max()) < 1e-5


def test_iphone_heic_and_avif_uploads_are_read(torch_server, images32):
    import pillow_heif  # dev dependency that writes HEIC; the server reads it with pi-heif

    x, _ = images32
    heic = io.BytesIO()
    pillow_heif.from_pillow(Image.fromarray(x[0])).save(heic, quality=95)
    for data in (heic.getvalue(), png_bytes(x[0], "AVIF")):
        r = httpx.post(f"{torch_server}/v1/predict", content=data, headers={"content-type": "application/octet-stream"})
        assert r.status_code == 200, r.text


def test_onnxruntime_backend_matches_torch(trained_run, images32):
    run, _ = trained_run
    x, _ = images32
    with live_server(create_app(ServeConfig(model=str(run), ort_chunk=2))) as url:
        assert httpx.get(f"{url}/v1/model").json()["backend"] == "onnxruntime"
        files = [("file", (f"{i}.png", png_bytes(x[i]), "image/png")) for i in range(3)]  # 3 images: two onnxruntime chunks
        r = httpx.post(f"{url}/v1/predict", files=files)
        assert r.status_code == 200
        got = [p["top_k"][0]["probability"] if p["class"] == "circle" else 1 - p["top_k"][0]["probability"] for p in r.json()["predictions"]]
        np.testing.assert_allclose(got, Classifier.load(run).predict_proba(x[:3])[:, 0], atol=1e-4)
        # A decompression bomb under the default 25 MP cap: 6000 x 6000 one-bit PNG, a few KB on the wire.
        bomb = io.BytesIO()
        Image.new("1", (6000, 6000)).save(bomb, format="PNG")
        assert len(bomb.getvalue()) < 100_000
        b = httpx.post(f"{url}/v1/predict", content=bomb.getvalue(), headers={"content-type": "image/png"})
        assert b.status_code == 400 and "too many pixels" in b.json()["detail"]


def test_raw_fast_path_answers_like_the_fastapi_route(torch_server, images32, monkeypatch):
    """A raw body with at most `top_k` skips FastAPI; any other query parameter goes through the route. Same answers."""
    import cnnlab.serve.app as serve_app

    x, _ = images32
    routed = []
    real = serve_app.read_uploads

    async def counting(*args, **kwargs):
        routed.append(1)
        return await real(*args, **kwargs)

    monkeypatch.setattr(serve_app, "read_uploads", counting)
    big = np.zeros((120, 120, 3), np.uint8)  # over this server's 10,000-pixel limit
    cases = [("?top_k=2", png_bytes(x[0]), "image/png"), ("", png_bytes(x[1], "JPEG"), "image/jpeg"),
             ("?top_k=1", png_bytes(x[2]), "application/octet-stream"), ("", b"definitely not a png", "image/png"),
             ("", b"", "image/png"), ("?top_k=3", png_bytes(big), "image/png")]
    for query, body, ctype in cases:
        fast = httpx.post(f"{torch_server}/v1/predict{query}", content=body, headers={"content-type": ctype})
        assert not routed, query
        slow = httpx.post(f"{torch_server}/v1/predict{query or '?'}&via=route", content=body, headers={"content-type": ctype})
        assert routed == [1], query
        routed.clear()
        assert (fast.status_code, fast.headers["content-type"], fast.content) == (slow.status_code, slow.headers["content-type"], slow.content)
    assert [httpx.post(f"{torch_server}/v1/predict?top_k={k}", content=png_bytes(x[0]), headers={"content-type": "image/png"}).status_code
            for k in ("0", "1001", "x", "")] == [422] * 4  # invalid values go to the route, which answers 422


def test_every_limit_has_its_status(torch_server, images32):
    x, _ = images32
    u = f"{torch_server}/v1/predict"
    big = b"\0" * 300_000
    r = httpx.post(u, content=big, headers={"content-type": "image/png"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    chunked = httpx.post(u, content=iter([big[:150_000], big[150_000:]]), headers={"content-type": "image/png"})  # no Content-Length
    assert chunked.status_code == 413
    r = httpx.post(u, content=b"hello", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "content type" in r.json()["detail"]
    assert httpx.post(u, content=png_bytes(x[0])).status_code == 415  # no content type at all
    r = httpx.post(u, content=b"definitely not a png", headers={"content-type": "image/png"})
    assert r.status_code == 400 and "not an image" in r.json()["detail"]
    r = httpx.post(u, content=png_bytes(x[0])[:60], headers={"content-type": "image/png"})
    assert r.status_code == 400 and "cannot load image" in r.json()["detail"]
    r = httpx.post(u, content=b"", headers={"content-type": "image/png"})
    assert r.status_code == 400 and "empty" in r.json()["detail"]
    large = np.zeros((120, 120, 3), np.uint8)  # 14,400 decoded pixels > this server's 10,000
    r = httpx.post(u, content=png_bytes(large), headers={"content-type": "image/png"})
    assert r.status_code == 400 and "too many pixels" in r.json()["detail"]
    four = [("file", (f"{i}.png", png_bytes(x[i]), "image/png")) for i in range(4)]
    r = httpx.post(u, files=four)
    assert r.status_code == 400 and "limit is 3" in r.json()["detail"]
    forty = [("file", (f"{i}.png", png_bytes(x[i % 4]), "image/png")) for i in range(40)]  # far past the limit: still counted
    r = httpx.post(u, files=forty)
    assert r.status_code == 400 and r.json()["detail"] == "40 images in one request; the limit is 3"
    r = httpx.post(u, data={"note": "no file"}, files=[])
    assert r.status_code in (400, 415)
    r = httpx.post(u, content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400
    assert httpx.post(f"{u}?top_k=0", content=png_bytes(x[0]), headers={"content-type": "image/png"}).status_code == 422
    assert httpx.get(u).status_code == 405


def test_queue_full_503_timeout_504_and_healthz_under_load(trained_run, images32):
    run, _ = trained_run
    x, _ = images32
    clf = Classifier.load(run)
    backend = GatedBackend(clf)
    cfg = ServeConfig(model=str(run), backend="torch", max_batch=1, max_queue=2, timeout_s=60)
    body, headers = png_bytes(x[0]), {"content-type": "image/png"}

    with live_server(create_app(cfg, clf=clf, backend=backend)) as url:
        async def scenario():
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                first = asyncio.create_task(c.post("/v1/predict", content=body, headers=headers))
                second = asyncio.create_task(c.post("/v1/predict", content=body, headers=headers))
                await asyncio.to_thread(backend.entered.wait, 30)
                for _ in range(400):  # both requests are inside the server now
                    if "cnnlab_queue_depth 2" in (await c.get("/metrics")).text:
                        break
                    await asyncio.sleep(0.025)
                third = await c.post("/v1/predict", content=body, headers=headers)
                health = await c.get("/healthz")  # the event loop still answers while the model is busy
                backend.gate.set()
                return third, health, await first, await second

        third, health, first, second = asyncio.run(scenario())
        assert third.status_code == 503 and third.headers["retry-after"] == "1" and "busy" in third.json()["detail"]
        assert health.status_code == 200
        assert first.status_code == 200 and second.status_code == 200
        text = httpx.get(f"{url}/metrics").text
        assert 'cnnlab_requests_total{method="POST",path="/v1/predict",status="503"} 1' in text

    slow = GatedBackend(clf)
    with live_server(create_app(ServeConfig(model=str(run), backend="torch", timeout_s=0.2, body_timeout_s=1.0), clf=clf, backend=slow)) as url:
        r = httpx.post(f"{url}/v1/predict", content=body, headers=headers, timeout=30)
        slow.gate.set()
        assert r.status_code == 504 and "longer than" in r.json()["detail"]
        assert httpx.post(f"{url}/v1/predict", content=body, headers=headers, timeout=30).status_code == 200
        # A client that announces a body and stalls gets 408 instead of holding the request open.
        import socket

        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\npartial")
            reply = b""
            while chunk := sock.recv(4096):  # the server closes the connection after the 408
                reply += chunk
            reply = reply.decode()
        assert reply.startswith("HTTP/1.1 408") and "not received within" in reply


def test_decoding_runs_off_the_event_loop(trained_run, images32, monkeypatch):
    """A long decode (a big photo) must not block the event loop: /healthz answers while it runs."""
    import cnnlab.serve.app as serve_app

    run, _ = trained_run
    x, _ = images32
    entered, gate, real = threading.Event(), threading.Event(), serve_app.decode_upload

    def slow_decode(data, name, clf, max_pixels):
        entered.set()
        gate.wait(60)  # holds this decode until the test has its answers
        return real(data, name, clf, max_pixels)

    monkeypatch.setattr(serve_app, "decode_upload", slow_decode)
    with live_server(create_app(ServeConfig(model=str(run), backend="torch"))) as url:
        async def scenario():
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                pending = asyncio.create_task(c.post("/v1/predict", content=png_bytes(x[0]), headers={"content-type": "image/png"}))
                try:
                    await asyncio.to_thread(entered.wait, 30)
                    health = await c.get("/healthz", timeout=30)  # a blocked event loop would never answer this
                    metrics = (await c.get("/metrics", timeout=30)).text
                finally:
                    gate.set()
                return health, metrics, await pending

        health, metrics, pred = asyncio.run(scenario())
    assert entered.is_set() and health.status_code == 200
    assert 'path="/healthz",status="200"} 1' in metrics and 'path="/v1/predict"' not in metrics  # answered before the predict finished
    assert pred.status_code == 200 and pred.json()["predictions"][0]["filename"] == "body"


def test_dynamic_batching_groups_waiting_requests(trained_run, images32):
    run, _ = trained_run
    x, _ = images32
    clf = Classifier.load(run)
    backend = GatedBackend(clf)
    cfg = ServeConfig(model=str(run), backend="torch", max_batch=8, max_delay_ms=0)
    with live_server(create_app(cfg, clf=clf, backend=backend)) as url:
        async def scenario():
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                post = lambda i: c.post("/v1/predict", content=png_bytes(x[i % 4]), headers={"content-type": "image/png"})
                first = asyncio.create_task(post(0))
                await asyncio.to_thread(backend.entered.wait, 30)  # batch 1 is running and blocked
                rest = [asyncio.create_task(post(i)) for i in range(1, 6)]
                for _ in range(400):
                    if "cnnlab_queue_depth 6" in (await c.get("/metrics")).text:
                        break
                    await asyncio.sleep(0.025)
                backend.gate.set()
                return await asyncio.gather(first, *rest)

        responses = asyncio.run(scenario())
        assert all(r.status_code == 200 for r in responses)
        assert backend.sizes == [1, 5]  # the five waiting requests ran as one forward pass
        oracle = clf.predict_proba(x)
        for i, r in enumerate(responses):
            assert abs(r.json()["predictions"][0]["probability"] - oracle[i % 4].max()) < 1e-5
        text = httpx.get(f"{url}/metrics").text
        assert 'cnnlab_batch_size_bucket{le="4.0"} 1' in text and 'cnnlab_batch_size_bucket{le="8.0"} 2' in text  # prometheus_client's bucket labels
        assert "# TYPE cnnlab_request_latency_seconds histogram" in text and "cnnlab_queue_depth 0" in text


def test_explain_png_and_json(torch_server, images32):
    pytest.importorskip("cnnlab.insight.gradcam")
    x, _ = images32
    u, h = f"{torch_server}/v1/explain", {"content-type": "image/png"}
    r = httpx.post(u, content=png_bytes(x[0]), headers=h)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    assert r.headers["x-class"] in ("circle", "square")
    assert np.asarray(Image.open(io.BytesIO(r.content))).shape == (32, 32, 3)
    j = httpx.post(f"{u}?format=json&class_name=square", content=png_bytes(x[0]), headers=h).json()
    assert j["class"] == "square" and 0 <= j["probability"] <= 1 and j["layer"]
    assert Image.open(io.BytesIO(base64.b64decode(j["overlay_png_base64"]))).size == (32, 32)
    assert httpx.post(f"{u}?class_name=zebra", content=png_bytes(x[0]), headers=h).status_code == 400
    assert httpx.post(f"{u}?format=gif", content=png_bytes(x[0]), headers=h).status_code == 422


def test_thread_defaults_split_the_cores():
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    auto = ServeConfig(model="m").with_thread_defaults()
    assert auto.threads == max(1, cores // 2) and auto.decode_threads == cores
    assert ServeConfig(model="m", threads=3, decode_threads=5).with_thread_defaults(workers=4) == ServeConfig(model="m", threads=3, decode_threads=5)
    many = ServeConfig(model="m").with_thread_defaults(workers=4 * cores)
    assert many.threads == 1 and many.decode_threads == 1


def test_serve_cli_errors(cli, tmp_path):
    assert_clean_error(cli("serve", "https://example.com/model.safetensors"), "local model files only")
    assert_clean_error(cli("serve", tmp_path / "nope"), "nope", "no such model file")
    assert_clean_error(cli("serve", tmp_path, "--max-batch", "0"), "--max-batch")
    assert_clean_error(cli("serve", tmp_path, "--port", "70000"), "--port")
    assert_clean_error(cli("serve", tmp_path, "--decode-threads", "-1"), "--decode-threads")


@pytest.mark.parametrize("flag, value, needles", [
    ("--max-upload-mb", "-1", ["--max-upload-mb", "above 0", "-1"]),
    ("--max-upload-mb", "inf", ["--max-upload-mb", "above 0"]),
    ("--port", "-1", ["--port", "0 to 65535"]),
    ("--workers", "0", ["--workers", "at least 1"]),
    ("--max-queue", "0", ["--max-queue", "at least 1"]),
    ("--max-connections", "0", ["--max-connections", "at least 1"]),
    ("--max-images-per-request", "0", ["--max-images-per-request", "at least 1"]),
    ("--max-delay-ms", "-1", ["--max-delay-ms", "from 0 to 60000 milliseconds"]),
    ("--timeout-s", "nan", ["--timeout-s", "above 0 and at most 86400 seconds", "nan"]),
    ("--body-timeout-s", "0", ["--body-timeout-s", "above 0"]),
    ("--header-timeout-s", "-2", ["--header-timeout-s", "above 0"]),
    ("--keep-alive-timeout-s", "1e9", ["--keep-alive-timeout-s", "at most 86400"]),
])
def test_serve_numeric_flags_name_themselves_and_their_range(cli, tmp_path, flag, value, needles):
    """Checked before the model loads: one line naming the flag as typed, the valid range and the value, exit 2."""
    assert_clean_error(cli("serve", tmp_path / "nope", flag, value), *needles)


def test_every_serve_config_field_is_a_flag_of_the_same_name():
    """So a message naming `--<field>` names a real flag, and the CLI can set every limit."""
    import argparse
    import dataclasses

    from cnnlab.cli import build_parser
    from cnnlab.cli.serve import _CONFIG_FLAGS

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    options = {o for action in subparsers.choices["serve"]._actions for o in action.option_strings}
    fields = {f.name for f in dataclasses.fields(ServeConfig)} - {"model", "max_upload_bytes"}
    assert fields == set(_CONFIG_FLAGS)
    assert {"--" + name.replace("_", "-") for name in fields} | {"--max-upload-mb"} <= options


def test_serve_command_starts_a_real_server(trained_run, tmp_path):
    """`cnnlab serve` as a user runs it: a separate process on 127.0.0.1 that answers and stops on SIGTERM."""
    import socket
    import subprocess
    import sys

    run, _ = trained_run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "serve", str(run), "--port", str(port), "--backend", "torch"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):  # polled, not timed
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.05)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/model").json()["classes"] == ["circle", "square"]
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in out and "Traceback" not in err


def test_serves_exported_int8_and_openvino_models(tmp_path):
    """`cnnlab serve model.int8.onnx` / `serve model_openvino`: each runs in its own runtime and answers like the run."""
    from cnnlab.errors import ConfigError
    from cnnlab.export import export_model
    from test_export_formats import HAVE_OPENVINO, STRIPES, train_stripes_model

    run, ds = train_stripes_model(tmp_path / "run")
    clf = Classifier.load(run)
    exports = [(export_model(run, format="onnx-int8", data=ds, calibration=64)["path"], "onnx-int8", "int8", "onnxruntime")]
    if HAVE_OPENVINO:
        exports.append((export_model(run, format="openvino")["path"], "openvino", "fp32", "openvino"))
    x = ds.split("test").x[:3]
    expected = [STRIPES[i] for i in clf.predict_proba(x).argmax(1)]
    for path, fmt, precision, runtime in exports:
        with live_server(create_app(ServeConfig(model=path, ort_chunk=2))) as url:
            info = httpx.get(f"{url}/v1/model").json()
            assert (info["classes"], info["format"], info["precision"], info["backend"]) == (STRIPES, fmt, precision, runtime)
            assert info["input_shape"] == {"channels": 3, "height": 32, "width": 32}
            files = [("file", (f"{i}.png", png_bytes(x[i]), "image/png")) for i in range(3)]  # 3 images: two onnxruntime chunks
            r = httpx.post(f"{url}/v1/predict?top_k=3", files=files)
            assert r.status_code == 200, r.text
            assert [p["class"] for p in r.json()["predictions"]] == expected
            raw = httpx.post(f"{url}/v1/predict", content=png_bytes(x[0]), headers={"content-type": "image/png"})
            assert raw.status_code == 200 and raw.json()["predictions"][0]["class"] == expected[0]
            e = httpx.post(f"{url}/v1/explain", content=png_bytes(x[0]), headers={"content-type": "image/png"})
            assert e.status_code == 501 and "serve the run folder" in e.json()["detail"]
    with pytest.raises(ConfigError, match="drop --backend torch"):
        create_app(ServeConfig(model=exports[0][0], backend="torch"))


def test_serve_refuses_a_broken_export_with_one_line(cli, tmp_path):
    """`cnnlab serve` loads an export before binding: a damaged or missing one is one clear line, exit 2."""
    from cnnlab.errors import ModelError
    from cnnlab.serve.app import load_model

    junk = tmp_path / "junk.int8.onnx"
    junk.write_bytes(b"not an onnx file")
    assert_clean_error(cli("serve", junk), "junk.int8.onnx", "onnxruntime cannot load it")
    with pytest.raises(ModelError, match="no such file"):
        load_model(ServeConfig(model=str(tmp_path / "absent.onnx")))
