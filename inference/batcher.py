"""Dynamic batching: one thread owns the model and runs one forward per group of concurrent requests.

Request threads call `submit()` with an already preprocessed tensor and wait on the returned future.
On a small CPU, one forward of 8 images is far cheaper than 8 forwards fighting over two cores.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

import torch

from inference.bundle import ModelBundle
from inference.predict import Prediction, forward, postprocess


class QueueFull(RuntimeError):
    """The batcher's queue is at its bound: the caller should answer 429 and ask the client to retry."""


@dataclass(frozen=True)
class BatchedResult:
    prediction: Prediction
    queue_ms: float  # time between submit and the start of the forward that included this image
    inference_ms: float  # duration of that forward (shared by every image of the batch)
    batch_size: int


@dataclass
class _Job:
    tensor: torch.Tensor
    top_k: int
    future: Future
    submitted: float


BatchObserver = Callable[[int, float], None]  # (batch size, forward seconds), e.g. for Prometheus


class MicroBatcher:
    def __init__(
        self,
        bundle: ModelBundle,
        max_batch_size: int = 16,
        max_wait_ms: float = 2.0,
        max_queue: int = 128,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self.bundle = bundle
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._stopped = threading.Event()
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def submit(self, tensor: torch.Tensor, top_k: int = 3) -> Future:
        """Queue one preprocessed image; raises `QueueFull` at once instead of waiting for room."""
        if self._stopped.is_set():
            raise RuntimeError("batcher is stopped")
        job = _Job(tensor, top_k, Future(), time.perf_counter())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self._queue.maxsize} images are already waiting") from None
        return job.future

    def submit_many(self, tensors: list[torch.Tensor], top_k: int = 3) -> list[Future]:
        """Queue several images of one request; if they don't all fit, none stays queued."""
        futures: list[Future] = []
        try:
            for tensor in tensors:
                futures.append(self.submit(tensor, top_k))
        except QueueFull:
            for future in futures:
                future.cancel()
            raise
        return futures

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the queued work, then end the thread."""
        self._stopped.set()
        self._queue.put(None)
        self._thread.join(timeout)

    def _gather(self, first: _Job) -> list[_Job]:
        jobs = [first]
        deadline = time.perf_counter() + self.max_wait_s
        while len(jobs) < self.max_batch_size:
            try:  # take whatever is already waiting without sleeping
                job = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    job = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if job is None:
                self._queue.put(None)  # keep the stop signal for the main loop
                break
            jobs.append(job)
        return jobs

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [j for j in self._gather(first) if j.future.set_running_or_notify_cancel()]
            if not jobs:
                continue
            started = time.perf_counter()
            try:
                probabilities = forward(self.bundle, torch.stack([j.tensor for j in jobs]))
                elapsed = time.perf_counter() - started
                for i, job in enumerate(jobs):
                    prediction = postprocess(self.bundle, probabilities[i : i + 1], job.top_k)[0]
                    job.future.set_result(
                        BatchedResult(prediction, (started - job.submitted) * 1000, elapsed * 1000, len(jobs))
                    )
                if self.on_batch:
                    self.on_batch(len(jobs), elapsed)
            except Exception as exc:  # never let one bad batch kill the thread that owns the model
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
