"""Property-based fuzzing of the HTTP API (hypothesis), driven by the server's own OpenAPI schema: never a 5xx.

Requests are built from /openapi.json (every path, method, query parameter and request content
type it declares) plus hostile variations: random bytes, bit-flipped real PNG/JPEG files, wrong
and missing content types, malformed multipart bodies, junk query values and unknown paths.
"""

from __future__ import annotations

import io
import os

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnlab.serve.app import ServeConfig, create_app
from test_serve import live_server


def _file(fmt: str) -> bytes:
    img = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


SEEDS = [_file("PNG"), _file("JPEG"), _file("GIF"), _file("BMP")]


@st.composite
def corrupted_image(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):  # flip bytes, mostly in the header where parsers branch
        i = draw(st.integers(0, min(len(data) - 1, draw(st.sampled_from([64, 512, len(data) - 1])))))
        data[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(1, len(data)))
    return bytes(data[:cut])


bodies = st.one_of(st.binary(max_size=2048), corrupted_image(), st.sampled_from(SEEDS))
content_types = st.one_of(
    st.sampled_from(["image/png", "image/jpeg", "application/octet-stream", "multipart/form-data", "multipart/form-data; boundary=zz",
                     "text/plain", "application/json", "", "image/", "multipart/form-data; boundary="]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),  # what an HTTP client can send
)
query_values = st.one_of(st.integers(-5, 2000).map(str), st.text(max_size=12), st.sampled_from(["png", "json", "gradcam", "gradcam++", "circle", "square"]))


@pytest.fixture(scope="module")
def fuzz_target(trained_run):
    run, _ = trained_run
    with live_server(create_app(ServeConfig(model=str(run), backend="torch", max_upload_bytes=100_000, max_pixels=50_000))) as url:
        schema = httpx.get(f"{url}/openapi.json").json()
        yield url, schema


def test_openapi_driven_fuzz_never_5xx(fuzz_target):
    url, schema = fuzz_target
    operations = []
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            params = [p["name"] for p in op.get("parameters", []) if p.get("in") == "query"]
            ctypes = list(op.get("requestBody", {}).get("content", {}))
            operations.append((method.upper(), path, params, ctypes))
    assert any(p == "/v1/predict" for _, p, _, _ in operations)

    @st.composite
    def requests(draw):
        """Mostly well-formed calls of a declared operation with hostile content; sometimes anything at all."""
        m, path, declared, ctypes = draw(st.sampled_from(operations))
        if draw(st.integers(0, 9)) == 0:
            m = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
        if draw(st.integers(0, 9)) == 0:
            path = "/v1/" + draw(st.text(alphabet="abc/%.-_", max_size=20))
        names = st.sampled_from(declared + ["x"]) if declared else st.just("x")
        params = draw(st.dictionaries(names, query_values, max_size=3))
        body = draw(bodies)
        ctype = draw(st.one_of(st.sampled_from(ctypes), content_types, st.none())) if ctypes else draw(st.one_of(content_types, st.none()))
        multipart = bool(ctypes) and draw(st.booleans())
        return m, path, params, body, ctype, multipart, draw(st.integers(0, 3))

    @settings(max_examples=int(os.environ.get("CNNLAB_FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(req=requests())
    def check(req):
        m, path, params, body, ctype, multipart, nfiles = req
        with httpx.Client(base_url=url, timeout=60) as c:
            if m in ("POST", "PUT") and multipart:
                files = [("file", (f"f{i}.png", body, ctype or "image/png")) for i in range(nfiles)]
                r = c.request(m, path, params=params, files=files or None, data=None if files else {"a": "b"})
            else:
                headers = {"content-type": ctype} if ctype is not None else {}
                r = c.request(m, path, params=params, content=body if m in ("POST", "PUT", "PATCH") else None, headers=headers)
            assert r.status_code < 500, (m, path, params, ctype, r.status_code, r.text[:300])

    check()
    assert httpx.get(f"{url}/healthz").status_code == 200
    metrics = httpx.get(f"{url}/metrics").text
    assert 'status="5' not in metrics
