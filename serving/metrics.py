"""Prometheus metrics, in a registry per app so several apps (tests) never collide.

Under `python flask_server.py --workers N` (N > 1) prometheus-client runs in multiprocess mode
(serving/workers.py): every worker writes its samples to shared files and `render` sums them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from serving.workers import multiprocess_metrics


@dataclass
class ServerMetrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    images: Counter
    verdicts: Counter
    batch_size: Histogram
    batch_seconds: Histogram
    queue_depth: Gauge
    # collectors that read their values from outside the process at scrape time (the job queue in Redis): rendered
    # as they are, in multiprocess mode too, where summing over workers would multiply them
    live: CollectorRegistry = field(default_factory=CollectorRegistry)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        """The text exposition: this app's registry, or in multiprocess mode every live worker's samples summed."""
        if not multiprocess_metrics():
            return generate_latest(self.registry) + generate_latest(self.live)
        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        return generate_latest(merged) + generate_latest(self.live)


def create_metrics() -> ServerMetrics:
    registry = CollectorRegistry()
    # set on every submit and after every forward; "livesum" adds up the live workers' queues
    depth = Gauge("tomato_queue_depth", "Images waiting for the batcher", registry=registry,
                  multiprocess_mode="livesum")
    return ServerMetrics(
        registry=registry,
        requests=Counter("tomato_http_requests", "HTTP requests by endpoint and status", ["endpoint", "method", "status"],
                         registry=registry),
        latency=Histogram("tomato_http_request_duration_seconds", "Request latency", ["endpoint"], registry=registry,
                          buckets=(0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5, 5, 10)),
        images=Counter("tomato_images_classified", "Images classified", registry=registry),
        verdicts=Counter("tomato_verdicts", "Answers by verdict (diagnosed, uncertain, not_tomato_leaf)", ["verdict"],
                         registry=registry),
        batch_size=Histogram("tomato_batch_size", "Images per model forward", registry=registry,
                             buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)),
        batch_seconds=Histogram("tomato_batch_forward_seconds", "Duration of one batched forward", registry=registry,
                                buckets=(0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2)),
        queue_depth=depth,
    )
