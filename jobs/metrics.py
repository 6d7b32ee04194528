"""Job-queue gauges for /metrics, read from Redis at scrape time (so every API process reports the same values)."""
from __future__ import annotations

from typing import Iterator

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from jobs.store import JobStore


class JobMetrics(Collector):
    """Queue length, jobs by state, live model workers; `tomato_jobs_queue_up` 0 while Redis is unreachable."""

    def __init__(self, store: JobStore, queue: str) -> None:
        self.store = store
        self.queue = queue

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("tomato_jobs_queue_up", "1 when the job queue (Redis) answers")
        try:
            length = int(self.store.redis.llen(self.queue))
            states = self.store.states()
            workers = self.store.workers()
        except redis.exceptions.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily("tomato_jobs_queue_length", "Chunk tasks waiting for a worker", value=length)
        by_state = GaugeMetricFamily("tomato_jobs", "Stored jobs by state", labels=["state"])
        for state, count in states.items():
            by_state.add_metric([state], count)
        yield by_state
        yield GaugeMetricFamily("tomato_jobs_workers", "Worker processes with a model loaded (heartbeats)",
                                value=workers)
