"""Queue preprocessed images on the worker's batcher and wait for them: shared by /predict and the v2 protocol, so
both get the same bounded queue (429), request deadline (504) and image/verdict counters."""
from __future__ import annotations

import time
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import torch

from inference import BatchedResult, MicroBatcher, QueueFull
from inference.batcher import Announcement, BatcherStopped
from serving.errors import ApiError

def parse_flag(name: str, raw: str | None) -> bool:
    """A true/false query parameter (absent = false); anything else is the client's mistake (400), not a silent
    "no", and exactly what the OpenAPI spec's boolean allows."""
    if raw is None or raw == "false":
        return False
    if raw == "true":
        return True
    raise ApiError(400, "bad_parameter", f"{name} must be true or false, got {raw!r}")


def submit(batcher: MicroBatcher, tensors: list[torch.Tensor], top_k: int,
           announcement: Announcement | None = None, explain: bool = False) -> list[Any]:
    """All images of one request on the batcher's queue, or a 429 when they do not fit."""
    try:
        return batcher.submit_many(tensors, top_k, announcement, explain=explain)
    except QueueFull as exc:
        raise ApiError(429, "overloaded", f"server is busy ({exc}); retry shortly", {"Retry-After": "1"}) from None
    except BatcherStopped:  # the request held the previous model for longer than a swap's grace period
        raise ApiError(503, "model_swapped", "the model was replaced while this request waited; retry",
                       {"Retry-After": "1"}) from None


def wait_all(futures: list[Any], deadline: float) -> list[BatchedResult]:
    """Every result by `deadline` (time.perf_counter()), else cancel what is left and answer 504."""
    results = []
    try:
        for future in futures:
            results.append(future.result(timeout=max(0.0, deadline - time.perf_counter())))
    except FutureTimeout:
        for future in futures:
            future.cancel()
        raise ApiError(504, "timeout", "the model did not answer within the request deadline") from None
    return results


def count_answers(metrics: Any, results: list[BatchedResult]) -> None:
    """Images answered and their verdicts, for /metrics."""
    metrics.images.inc(len(results))
    for result in results:
        metrics.verdicts.labels(result.prediction.verdict).inc()
