"""The server's Prometheus metrics through prometheus_client, right under `serve --workers N` too.

One process (`--workers 1`, or create_app embedded in a program or a test): the metrics live in a
registry of the app's own. Several worker processes: each worker writes its values to files in a
folder shared by all of them (PROMETHEUS_MULTIPROC_DIR: a fresh temp folder `serve` creates before the
workers start and removes at shutdown), and `/metrics`, whichever worker answers it, adds up every
worker's files (prometheus_client's MultiProcessCollector). Counters and histograms of a worker that
died stay in the totals, so they never go backwards; the queue-depth gauge is summed over live workers
only: a scrape that finds a worker gone drops its gauge file (`mark_process_dead`).

Names and labels: cnnlab_requests_total{method,path,status}, cnnlab_request_latency_seconds{path}
(histogram), cnnlab_batch_size (histogram), cnnlab_queue_depth (gauge).
"""

from __future__ import annotations

import glob
import os
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess, values
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it when first imported
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the text format every Prometheus version reads


class ServerMetrics:
    """Request counts and latencies, batch sizes and queue depth; `render()` is the /metrics body.

    `multiprocess_dir`: the folder shared by the worker processes, or None for a single process. It must
    have been in the environment as PROMETHEUS_MULTIPROC_DIR before prometheus_client was imported
    (serve() sets it before starting the workers).
    """

    def __init__(self, multiprocess_dir: str | None = None):
        self.multiprocess_dir = multiprocess_dir
        if multiprocess_dir is not None and not getattr(values.ValueClass, "_multiprocess", False):
            raise RuntimeError(f"{MULTIPROC_ENV} must be set before prometheus_client is first imported for multiprocess metrics")
        # Multiprocess values live in the shared files and are read back from there, so they join no registry.
        registry = None if multiprocess_dir is not None else CollectorRegistry(auto_describe=True)
        self.registry = registry
        self.requests = Counter("cnnlab_requests", "HTTP requests by method, path and status code.",
                                ("method", "path", "status"), registry=registry)
        self.latency = Histogram("cnnlab_request_latency_seconds", "Request latency by path.", ("path",),
                                 buckets=LATENCY_BUCKETS_S, registry=registry)
        self.batch_size = Histogram("cnnlab_batch_size", "Images per model forward pass (dynamic batching).",
                                    buckets=BATCH_BUCKETS, registry=registry)
        self.queue_depth = Gauge("cnnlab_queue_depth", "Images waiting for or inside the running batch.",
                                 registry=registry, multiprocess_mode="livesum")
        self._children: dict[tuple[str, str, int], tuple] = {}  # label lookups cached: one per route and status
        self._lock = threading.Lock()

    def observe_request(self, method: str, path: str, status: int, seconds: float) -> None:
        key = (method, path, status)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.setdefault(key, (self.requests.labels(method, path, str(status)), self.latency.labels(path)))
        child[0].inc()
        child[1].observe(seconds)

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def set_queue_depth(self, images: int) -> None:
        self.queue_depth.set(images)

    def render(self) -> bytes:
        """The Prometheus text exposition of this process's metrics, or of every worker's."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        self._mark_dead_workers()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
        return generate_latest(registry)

    def close(self) -> None:
        """This worker is stopping: its queue depth no longer counts."""
        if self.multiprocess_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)

    def _mark_dead_workers(self) -> None:
        """Drop the live-gauge files of worker processes that no longer exist (killed, crashed)."""
        for f in glob.glob(os.path.join(self.multiprocess_dir, "gauge_live*_*.db")):
            try:
                pid = int(os.path.basename(f)[: -len(".db")].rsplit("_", 1)[1])
            except ValueError:
                continue
            if not _alive(pid):
                multiprocess.mark_process_dead(pid, self.multiprocess_dir)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
