"""Prometheus metrics of one service process (a registry of its own, so that apps never share counters).

``faceflow_requests_total{route,method,status}``, ``faceflow_request_seconds{route}`` (a latency
histogram per route template), ``faceflow_queue_depth`` (calls waiting for the work pool),
``faceflow_work_in_progress`` and ``faceflow_model_load_seconds`` (the default models at start).
With ``--workers N`` each process answers ``/metrics`` for itself.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The service's collectors in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("faceflow_requests", "HTTP requests answered.", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("faceflow_request_seconds", "Time to answer a request, by route.", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("faceflow_queue_depth", "Calls waiting for the work pool.", registry=self.registry)
        self.in_progress = Gauge("faceflow_work_in_progress", "Calls running in the work pool.",
                                 registry=self.registry)
        self.model_load = Gauge("faceflow_model_load_seconds", "Seconds the default models took to load.",
                                registry=self.registry)

    def pool_changed(self, waiting: int, running: int) -> None:
        self.queue_depth.set(waiting)
        self.in_progress.set(running)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
