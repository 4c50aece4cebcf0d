"""/metrics through prometheus_client: one process, and `cnnlab serve --workers 2` where the counts of both
worker processes add up, a killed worker's counts stay and its gauge goes, and the metrics folder is removed."""

from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from cnnlab.serve.app import ServeConfig, create_app
from cnnlab.serve.metrics import ServerMetrics
from test_export_formats import train_stripes_model
from test_serve import live_server, png_bytes


@pytest.fixture(scope="module")
def stripes_run(tmp_path_factory):
    return train_stripes_model(tmp_path_factory.mktemp("metrics") / "run")


def request_counts(text: str) -> dict[tuple[str, str, str], float]:
    return {(s.labels["method"], s.labels["path"], s.labels["status"]): s.value
            for f in text_string_to_metric_families(text) for s in f.samples if s.name == "cnnlab_requests_total"}


def sample(text: str, name: str) -> float:
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name and not s.labels)


def per_worker_counts(metrics_dir: Path) -> dict[int, dict]:
    """Each worker's own request counts, read from its file in the shared metrics folder."""
    out = {}
    for f in glob.glob(str(metrics_dir / "counter_*.db")):
        pid = int(Path(f).stem.rsplit("_", 1)[1])
        out[pid] = {(s.labels["method"], s.labels["path"], s.labels["status"]): s.value
                    for m in MultiProcessCollector.merge([f]) for s in m.samples if s.name == "cnnlab_requests_total"}
    return out


def live_gauge_pids(metrics_dir: Path) -> set[int]:
    return {int(Path(f).stem.rsplit("_", 1)[1]) for f in glob.glob(str(metrics_dir / "gauge_livesum_*.db"))}


def poll(cond, what: str, tries: int = 1200, delay_s: float = 0.05):
    for _ in range(tries):  # polled, never timed
        got = cond()
        if got:
            return got
        time.sleep(delay_s)
    raise AssertionError(f"gave up waiting for {what}")


@contextmanager
def serve_workers(model: Path, tmp: Path, workers: int = 2):
    """`cnnlab serve MODEL --workers N` in its own process group, with its temp folder under `tmp`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "serve", str(model), "--port", str(port), "--workers", str(workers),
                             "--backend", "torch", "--threads", "1", "--decode-threads", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def up():
            assert proc.poll() is None, proc.stderr.read()
            dirs = glob.glob(str(tmp / "cnnlab-metrics-*"))
            return dirs and len(live_gauge_pids(Path(dirs[0]))) == workers and Path(dirs[0])
        # Every worker has built its app (its gauge file exists); the socket was bound before they started, so
        # requests from now on are answered (no health probe here: it would count in the totals under test).
        metrics_dir = poll(up, f"{workers} workers to start", tries=2400)
        yield f"http://127.0.0.1:{port}", proc, metrics_dir
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_two_workers_counts_add_up_and_survive_a_dead_worker(stripes_run, tmp_path):
    run, ds = stripes_run
    x = ds.split("test").x
    with serve_workers(run, tmp_path / "tmp") as (url, proc, metrics_dir):
        # Fresh connections until both workers have answered some: the kernel spreads the accepts.
        n_health = 0
        for i in range(400):
            httpx.get(f"{url}/healthz")  # a new connection each time
            n_health += 1
            if n_health >= 20 and n_health % 10 == 0:
                served = per_worker_counts(metrics_dir)
                if len(served) == 2 and all(c.get(("GET", "/healthz", "200"), 0) > 0 for c in served.values()):
                    break
        served = per_worker_counts(metrics_dir)
        assert len(served) == 2 and all(c.get(("GET", "/healthz", "200"), 0) > 0 for c in served.values()), served
        n_predict = 5
        for i in range(n_predict):
            r = httpx.post(f"{url}/v1/predict", content=png_bytes(x[i]), headers={"content-type": "image/png"})
            assert r.status_code == 200, r.text

        for scrape in range(4):  # whichever worker answers, the totals are the whole server's
            r = httpx.get(f"{url}/metrics")
            assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
            counts = request_counts(r.text)
            assert counts[("GET", "/healthz", "200")] == n_health
            assert counts[("POST", "/v1/predict", "200")] == n_predict
            assert counts.get(("GET", "/metrics", "200"), 0) == scrape  # earlier scrapes, not this one
            assert sample(r.text, "cnnlab_batch_size_count") == n_predict and sample(r.text, "cnnlab_queue_depth") == 0
        by_worker = per_worker_counts(metrics_dir)
        assert sum(c.get(("GET", "/healthz", "200"), 0) for c in by_worker.values()) == n_health

        # A worker killed outright: its counts stay in the totals, its queue-depth gauge file goes.
        victim = max(by_worker, key=lambda pid: by_worker[pid].get(("GET", "/healthz", "200"), 0))
        victim_counts = by_worker[victim]
        os.kill(victim, signal.SIGKILL)

        def victim_gone():
            text = httpx.get(f"{url}/metrics").text  # a scrape drops dead workers' live gauges
            return victim not in live_gauge_pids(metrics_dir) and text
        text = poll(victim_gone, "the killed worker's gauge to be dropped")
        assert request_counts(text)[("GET", "/healthz", "200")] == n_health
        assert per_worker_counts(metrics_dir)[victim] == victim_counts
        poll(lambda: len(live_gauge_pids(metrics_dir) - {victim}) == 2, "uvicorn to start a replacement worker", tries=2400)

        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert not metrics_dir.exists() and not list((tmp_path / "tmp").iterdir())  # the metrics folder is removed at shutdown


def test_one_process_metrics_keep_their_names_and_count_exactly(stripes_run):
    run, ds = stripes_run
    with live_server(create_app(ServeConfig(model=str(run), backend="torch"))) as url:
        for _ in range(3):
            httpx.get(f"{url}/healthz")
        httpx.post(f"{url}/v1/predict", content=png_bytes(ds.split("test").x[0]), headers={"content-type": "image/png"})
        httpx.post(f"{url}/v1/predict", content=b"not an image", headers={"content-type": "image/png"})
        text = httpx.get(f"{url}/metrics").text
    types = {f.name: f.type for f in text_string_to_metric_families(text) if not f.name.endswith("_created")}  # prometheus_client's own
    assert types == {"cnnlab_requests": "counter", "cnnlab_request_latency_seconds": "histogram",
                     "cnnlab_batch_size": "histogram", "cnnlab_queue_depth": "gauge"}
    counts = request_counts(text)
    assert counts[("GET", "/healthz", "200")] == 3 and counts[("POST", "/v1/predict", "200")] == 1
    assert counts[("POST", "/v1/predict", "400")] == 1
    assert 'cnnlab_request_latency_seconds_bucket{le="+Inf",path="/healthz"} 3.0' in text
    # Two apps in one process (tests, embedding programs) keep separate registries.
    other = ServerMetrics()
    assert "cnnlab_requests_total{" not in other.render().decode()


@pytest.mark.skipif("PROMETHEUS_MULTIPROC_DIR" in os.environ, reason="this test process is in multiprocess mode itself")
def test_multiprocess_mode_needs_the_folder_set_before_import(tmp_path):
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client"):
        ServerMetrics(str(tmp_path))
