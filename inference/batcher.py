"""Dynamic batching: one thread owns the model and runs one forward per group of concurrent requests.

Request threads call `submit()` with an already preprocessed tensor and wait on the returned future.
On a small CPU, one forward of 8 images is far cheaper than 8 forwards fighting over two cores.
The batcher waits up to `max_wait_ms` for company only while some request announced (`incoming`) that it is
decoding images: a lone request is never held back for a batch that is not coming.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from inference.bundle import ModelBundle
from inference.predict import Prediction, forward, postprocess


class QueueFull(RuntimeError):
    """The batcher's queue is at its bound: the caller should answer 429 and ask the client to retry."""


class BatcherStopped(RuntimeError):
    """The batcher was stopped (its model was swapped out long ago): the caller should answer 503 and retry."""


@dataclass(frozen=True)
class BatchedResult:
    prediction: Prediction
    queue_ms: float  # time between submit and the start of the forward that included this image
    inference_ms: float  # duration of that forward (shared by every image of the batch)
    batch_size: int
    cam: torch.Tensor | None = None  # (h, w) class-activation map of the top class, when the job asked for it


@dataclass
class _Job:
    tensor: torch.Tensor
    top_k: int
    future: Future
    submitted: float
    explain: bool = False


BatchObserver = Callable[[int, float], None]  # (batch size, forward seconds), e.g. for Prometheus


class Announcement:
    """Images a request thread is decoding; `MicroBatcher.submit_many(..., announcement=)` settles it."""

    def __init__(self, count: int) -> None:
        self.pending = count


class MicroBatcher:
    POLL_S = 0.001  # while waiting for announced images, look at the queue at least this often

    def __init__(
        self,
        bundle: ModelBundle,
        max_batch_size: int = 16,
        max_wait_ms: float = 2.0,
        max_queue: int = 128,
        on_batch: BatchObserver | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be at least 1")
        self.bundle = bundle
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._incoming = 0  # announced images not yet queued (read without the lock: a hint for _gather)
        self._lock = threading.Lock()  # guards _incoming and makes "check room, then queue" atomic
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._stopped = threading.Event()
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @contextmanager
    def incoming(self, count: int = 1) -> Iterator[Announcement]:
        """Announce `count` images that this thread is about to decode, so a batch being gathered waits for them
        (up to max_wait_ms). Submit them inside the block with `announcement=`; leaving the block without
        submitting (a bad upload) withdraws the announcement."""
        announcement = Announcement(count)
        with self._lock:
            self._incoming += count
        try:
            yield announcement
        finally:
            with self._lock:
                self._incoming -= announcement.pending
                announcement.pending = 0

    def submit(self, tensor: torch.Tensor, top_k: int = 3) -> Future:
        """Queue one preprocessed image; raises `QueueFull` at once instead of waiting for room."""
        return self.submit_many([tensor], top_k)[0]

    def submit_many(self, tensors: list[torch.Tensor], top_k: int = 3,
                    announcement: Announcement | None = None, explain: bool = False) -> list[Future]:
        """Queue the images of one request together, or none of them: a request that does not fit takes no
        room from the others. Raises `QueueFull` at once instead of waiting for room. `explain`: the results carry
        class-activation maps (the forward of their batch also returns the feature map)."""
        with self._lock:  # only submitters add, so the room checked here is still there below
            if self._stopped.is_set():
                raise BatcherStopped("batcher is stopped")
            room = self._queue.maxsize - self._queue.qsize()
            if len(tensors) > room:
                raise QueueFull(f"{self._queue.qsize()} of {self._queue.maxsize} queue places are taken")
            now = time.perf_counter()
            jobs = [_Job(tensor, top_k, Future(), now, explain) for tensor in tensors]
            for job in jobs:
                self._queue.put_nowait(job)
            if announcement is not None:  # queued first, then settled: _gather never sees 0 with jobs unqueued
                self._incoming -= announcement.pending
                announcement.pending = 0
        return [job.future for job in jobs]

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
                if self._incoming <= 0:  # nothing announced: take what was queued meanwhile and run now
                    try:
                        job = self._queue.get_nowait()
                    except queue.Empty:
                        break
                else:
                    try:  # short slices, so the wait ends soon after the announced images are settled
                        job = self._queue.get(timeout=min(remaining, self.POLL_S))
                    except queue.Empty:
                        continue
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
                explain = any(j.explain for j in jobs)  # one forward either way; plain batches stay plain
                scores = forward(self.bundle, torch.stack([j.tensor for j in jobs]), explain)
                elapsed = time.perf_counter() - started
                for i, job in enumerate(jobs):
                    prediction = postprocess(self.bundle, scores.row(i), job.top_k)[0]
                    cam = scores.cams[i] if job.explain and scores.cams is not None else None
                    job.future.set_result(
                        BatchedResult(prediction, (started - job.submitted) * 1000, elapsed * 1000, len(jobs), cam)
                    )
                if self.on_batch:
                    self.on_batch(len(jobs), elapsed)
            except Exception as exc:  # never let one bad batch kill the thread that owns the model
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
