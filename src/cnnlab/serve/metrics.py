"""Prometheus text exposition (format 0.0.4) without a client library: counters, histograms, gauges."""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Callable

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # last = +Inf
        self.sum, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, cum = [], 0
        sep = "," if labels else ""
        for b, c in zip(self.buckets + ("+Inf",), self.counts):
            cum += c
            out.append(f'{name}_bucket{{{labels}{sep}le="{b}"}} {cum}')
        lab = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{lab} {self.sum:.6f}", f"{name}_count{lab} {self.count}"]
        return out


class ServerMetrics:
    def __init__(self, queue_depth: Callable[[], int]):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.queue_depth = queue_depth

    def observe_request(self, method: str, path: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, path, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            self.latency.setdefault(path, Histogram(LATENCY_BUCKETS_S)).observe(seconds)

    def observe_batch(self, size: int) -> None:
        with self._lock:
            self.batch_size.observe(size)

    def render(self) -> str:
        with self._lock:
            lines = ["# HELP cnnlab_requests_total HTTP requests by method, path and status code.",
                     "# TYPE cnnlab_requests_total counter"]
            for (m, p, s), n in sorted(self.requests.items()):
                lines.append(f'cnnlab_requests_total{{method="{m}",path="{p}",status="{s}"}} {n}')
            lines += ["# HELP cnnlab_request_latency_seconds Request latency by path.",
                      "# TYPE cnnlab_request_latency_seconds histogram"]
            for p, h in sorted(self.latency.items()):
                lines += h.lines("cnnlab_request_latency_seconds", f'path="{p}"')
            lines += ["# HELP cnnlab_batch_size Images per model forward pass (dynamic batching).",
                      "# TYPE cnnlab_batch_size histogram", *self.batch_size.lines("cnnlab_batch_size"),
                      "# HELP cnnlab_queue_depth Images waiting for or inside the running batch.",
                      "# TYPE cnnlab_queue_depth gauge", f"cnnlab_queue_depth {self.queue_depth()}"]
        return "\n".join(lines) + "\n"
