"""Queue preprocessed images on the worker's batcher and wait for them: shared by /predict and the v2 protocol, so
both get the same bounded queue (429), request deadline (504) and image/verdict counters."""
from __future__ import annotations

import time
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import torch

from flask import current_app, request
from PIL import Image

from inference import BatchedResult, InvalidImage, MicroBatcher, QueueFull, decode_image
from inference.batcher import Announcement, BatcherStopped
from serving.errors import IMAGE_ERROR_STATUS, ApiError

def parse_flag(name: str, raw: str | None) -> bool:
    """A true/false query parameter (absent = false); anything else is the client's mistake (400), not a silent
    "no", and exactly what the OpenAPI spec's boolean allows."""
    if raw is None or raw == "false":
        return False
    if raw == "true":
        return True
    raise ApiError(400, "bad_parameter", f"{name} must be true or false, got {raw!r}")


def parse_top_k(classes: int) -> int:
    """The `top_k` query parameter (default: the TOP_K setting), 400 unless it is 1..classes."""
    raw = request.args.get("top_k", current_app.config["TOP_K"])
    try:
        top_k = int(raw)
    except (TypeError, ValueError):
        raise ApiError(400, "bad_parameter", f"top_k must be an integer, got {raw!r}") from None
    if not 1 <= top_k <= classes:
        raise ApiError(400, "bad_parameter", f"top_k must be between 1 and {classes}")
    return top_k


def decode_or_error(data: bytes, label: str) -> Image.Image:
    """The upload as an RGB image within MAX_IMAGE_PIXELS, or the ApiError its InvalidImage code maps to, the
    message starting with `label` (the file name, or the image's place in the request)."""
    try:
        return decode_image(data, max_pixels=int(current_app.config["MAX_IMAGE_PIXELS"]))
    except InvalidImage as exc:
        raise ApiError(IMAGE_ERROR_STATUS.get(exc.code, 400), exc.code, f"{label}: {exc}") from None


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
