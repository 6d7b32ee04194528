"""Prometheus metrics, in a registry per app so several apps (tests) never collide."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class ServerMetrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    images: Counter
    batch_size: Histogram
    batch_seconds: Histogram
    queue_depth: Gauge

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)


def create_metrics(queue_depth: Callable[[], float]) -> ServerMetrics:
    registry = CollectorRegistry()
    depth = Gauge("tomato_queue_depth", "Images waiting for the batcher", registry=registry)
    depth.set_function(queue_depth)
    return ServerMetrics(
        registry=registry,
        requests=Counter("tomato_http_requests", "HTTP requests by endpoint and status", ["endpoint", "method", "status"],
                         registry=registry),
        latency=Histogram("tomato_http_request_duration_seconds", "Request latency", ["endpoint"], registry=registry,
                          buckets=(0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5, 5, 10)),
        images=Counter("tomato_images_classified", "Images classified", registry=registry),
        batch_size=Histogram("tomato_batch_size", "Images per model forward", registry=registry,
                             buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)),
        batch_seconds=Histogram("tomato_batch_forward_seconds", "Duration of one batched forward", registry=registry,
                                buckets=(0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2)),
        queue_depth=depth,
    )
