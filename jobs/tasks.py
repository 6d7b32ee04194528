"""What a worker process does: load the model once after the fork, then score one chunk per task.

The model session is created in `worker_process_init` (each prefork child, after the fork: ONNX Runtime and torch
thread pools do not survive a fork). A child that cannot load the model stops its worker (SIGTERM to the parent:
a warm shutdown that puts any chunk it holds back on the queue), so a broken worker never takes tasks. A child
with its model keeps a heartbeat key in Redis (`/metrics` counts them as workers).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from typing import Any

import numpy as np
import redis
import torch
from celery import shared_task
from celery.signals import worker_process_init, worker_process_shutdown

from inference.bundle import DEFAULT_BUNDLE_PATH, ModelBundle, load_bundle
from inference.crops import normalise
from inference.predict import forward, postprocess
from jobs.celery_app import TASK_NAME
from jobs.settings import JobSettings
from jobs.store import WORKER_PREFIX, JobStore, connect

log = logging.getLogger("tomato.jobs")
HEARTBEAT_S = 5.0  # a worker key lives 3 beats: a dead worker leaves the count within 15 s


class _Worker:
    """This process's model, store and heartbeat (one per prefork child)."""

    bundle: ModelBundle | None = None
    store: JobStore | None = None
    heartbeat_key: str | None = None
    working_mark_s: int = 65  # how long "a worker is scoring this chunk" holds without an answer (load_worker)
    stop = threading.Event()


def load_worker(settings: JobSettings) -> None:
    """Load and warm the bundle named by TOMATO_MODEL_PATH, connect the store, start the heartbeat."""
    torch.set_num_threads(settings.threads)
    _Worker.bundle = load_bundle(os.environ.get("TOMATO_MODEL_PATH") or DEFAULT_BUNDLE_PATH,
                                 device=os.environ.get("TOMATO_DEVICE", "auto"),
                                 backend=os.environ.get("TOMATO_BACKEND", "auto"), threads=settings.threads)
    _Worker.store = JobStore(connect(settings.redis_url), settings.result_ttl_s)
    # A chunk is scored in well under a second; a marker older than the redelivery bound belongs to a worker that
    # died or hung (seen once across a Redis restart), and must not keep the API from sending that chunk again.
    _Worker.working_mark_s = settings.visibility_timeout_s + settings.restore_interval_s
    _Worker.heartbeat_key = f"{WORKER_PREFIX}{socket.gethostname()}:{os.getpid()}"
    threading.Thread(target=_heartbeat, name="heartbeat", daemon=True).start()


def _heartbeat() -> None:
    beat = json.dumps({"pid": os.getpid(), "model": _Worker.bundle.describe() if _Worker.bundle else None})
    while not _Worker.stop.is_set():
        try:
            _Worker.store.redis.set(_Worker.heartbeat_key, beat, ex=int(3 * HEARTBEAT_S))
        except Exception as exc:  # Redis restarting: the next beat tries again
            log.warning("heartbeat failed: %s", exc)
        _Worker.stop.wait(HEARTBEAT_S)


@worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    try:
        load_worker(JobSettings.from_env())
    except Exception as exc:
        log.critical("the model failed to load (%s: %s): this worker stops and takes no tasks",
                     type(exc).__name__, exc)
        os.kill(os.getppid(), signal.SIGTERM)  # warm shutdown of the worker: held chunks go back to the queue
        os._exit(3)
    log.info("worker process %d ready: %s", os.getpid(), _Worker.bundle.describe())


@worker_process_shutdown.connect
def _on_process_shutdown(**_: Any) -> None:
    _Worker.stop.set()
    if _Worker.store is not None and _Worker.heartbeat_key:
        try:
            _Worker.store.redis.delete(_Worker.heartbeat_key)
        except Exception:  # Redis gone: the key expires by itself
            pass


@shared_task(name=TASK_NAME, ignore_result=True)  # the job store holds the results, once per image
def score_chunk(job_id: str, chunk: int, indices: list[int], top_k: int, enqueued_at: float) -> dict[str, Any]:
    """Score chunk `chunk` of job `job_id` (images `indices`) in one forward and write its results once."""
    store, bundle = _Worker.store, _Worker.bundle
    assert store is not None and bundle is not None, "worker_process_init did not load the model"
    started = time.time()
    state = store.start_chunk(job_id)
    if state not in ("queued", "running"):  # cancelled, failed, done (a redelivery) or expired: nothing to do
        return {"skipped": state}
    working = store.key(job_id, f"working:{chunk}")
    store.redis.set(working, os.getpid(), ex=_Worker.working_mark_s)
    try:
        data = store.take_input(job_id, chunk)
        if data is None:
            answered = store.redis.hmget(store.key(job_id, "results"), indices)
            if all(answered):  # a redelivery of a chunk already written and dropped
                return {"skipped": "answered"}
            store.fail(job_id, f"the inputs of chunk {chunk} expired before a worker took it")
            return {"skipped": "expired"}
        side = bundle.preprocess.image_size
        crops = np.frombuffer(bytearray(data), dtype=np.uint8)  # writable: torch.from_numpy wants it
        if crops.size != len(indices) * 3 * side * side:
            store.fail(job_id, f"chunk {chunk} was cropped for another input size than this worker's model "
                               f"({side} px, {bundle.name} {bundle.version})")
            return {"skipped": "input_size"}
        forward_started = time.perf_counter()
        batch = normalise(bundle.preprocess, crops.reshape(len(indices), 3, side, side))
        predictions = postprocess(bundle, forward(bundle, batch), top_k)
        inference_ms = (time.perf_counter() - forward_started) * 1000
        done_at = time.time()
        timing = {"wait": round((started - enqueued_at) * 1000, 2), "inference": round(inference_ms, 2),
                  "batch_size": len(indices)}
        written = store.write_results(job_id, {
            index: {"status": "ok", **prediction.to_dict(), "model_version": bundle.version, "done_at": done_at,
                    "timing_ms": timing}
            for index, prediction in zip(indices, predictions)})
        store.drop_input(job_id, chunk)
        return {"written": written}
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        # Redis restarting: the chunk stays unacknowledged (task_acks_on_failure_or_timeout=False) and a worker
        # gets it again after the visibility timeout; its writes are idempotent, so nothing counts twice
        log.warning("Redis unavailable on chunk %d of job %s (%s): it will be delivered again", chunk, job_id, exc)
        raise
    except Exception as exc:  # a fault of this chunk, not of the queue: the job fails, the chunk is acknowledged
        log.exception("chunk %d of job %s failed", chunk, job_id)
        store.fail(job_id, f"a worker failed on chunk {chunk}: {type(exc).__name__}: {exc}")
        return {"failed": f"{type(exc).__name__}: {exc}"}
    finally:
        try:
            store.redis.delete(working)
        except redis.exceptions.RedisError:
            pass
