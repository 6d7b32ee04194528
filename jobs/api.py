"""The job API, a Flask blueprint wired into `create_app` by `register(app)`:

  POST   /v1/jobs        many images (multipart "file" parts) or one zip/tar archive -> 202 {job_id, status_url, total}
  GET    /v1/jobs/<id>   state, progress (done/total, images/s, ETA), results when done (JSON, or ?format=csv)
  DELETE /v1/jobs/<id>   cancel

This tier needs no model: it reads the preprocessing from the bundle file, decodes and crops every image
(inference/images.py, inference/crops.py) and queues the small uint8 crops in chunks; a file that cannot be used
becomes that image's error result at once. Redis unreachable -> 503 with Retry-After on every job call.
"""
from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis
from flask import Blueprint, Flask, Response, current_app, jsonify, request, url_for
from kombu.exceptions import OperationalError

from inference.crops import crop
from inference.images import InvalidImage, decode_image
from inference.rows import error_row, prediction_row, write_rows
from jobs.celery_app import TASK_NAME, make_celery
from jobs.metrics import JobMetrics
from jobs.settings import JobSettings
from jobs.store import FINAL_STATES, JobStore, connect
from jobs.uploads import JobFile, read_job_files
from model.bundle import read_bundle
from model.transforms import PreprocessConfig
from serving.auth import require_token
from serving.errors import ApiError
from serving.scoring import parse_top_k

bp = Blueprint("jobs", __name__)
RETRY_AFTER_S = 2


class JobQueue:
    """What the job routes share in one API process: settings, the store, the Celery sender, the preprocessing."""

    def __init__(self, settings: JobSettings, model_path: str) -> None:
        self.settings = settings
        self.store = JobStore(connect(settings.redis_url), settings.result_ttl_s)
        self.celery = make_celery(settings)
        self.model_path = model_path
        self._model: tuple[PreprocessConfig, int] | None = None
        self._lock = threading.Lock()

    def model(self) -> tuple[PreprocessConfig, int]:
        """(preprocessing, number of classes) read once from the bundle file: no network is built here."""
        with self._lock:
            if self._model is None:
                raw = read_bundle(Path(self.model_path))
                self._model = PreprocessConfig.from_dict(raw["preprocess"]), len(raw["class_names"])
            return self._model

    def waiting_images(self) -> int:
        """Images queued and not yet taken by a worker (chunks in the Celery list x chunk size, an upper bound)."""
        return int(self.store.redis.llen(self.settings.queue)) * self.settings.chunk_size

    def enqueue(self, job_id: str, chunk: int, indices: list[int], crops: list[np.ndarray], top_k: int) -> None:
        self.store.put_input(job_id, chunk, np.stack(crops).tobytes(), {"indices": indices, "top_k": top_k})
        self.send(job_id, chunk, indices, top_k)

    def send(self, job_id: str, chunk: int, indices: list[int], top_k: int) -> None:
        self.celery.send_task(TASK_NAME, args=[job_id, chunk, indices, top_k, time.time()],
                              queue=self.settings.queue, retry=True,
                              retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5})

    def resend_lost(self, job_id: str, meta: dict[str, str]) -> int:
        """Send again the chunks of a stalled job whose task message no longer exists anywhere.

        Redis can lose a message outright: a worker's BRPOP takes it off the queue and kombu records it as
        unacknowledged in a second command, so Redis going down between the two leaves it nowhere. Once a job has
        not moved for twice the redelivery bound, each unanswered chunk that is neither queued, unacknowledged nor
        being scored is sent again (a duplicate would be harmless: writes are idempotent; a worker's "scoring" mark
        lasts at most the redelivery bound, so a worker that hung holding a chunk does not hold it for ever). Runs
        when a client reads the job; the queue is scanned only for stalled jobs."""
        s = self.settings
        moved = max(float(meta.get(k) or 0) for k in ("created", "progress_at", "resent_at"))
        if time.time() - moved < 2 * (s.visibility_timeout_s + s.restore_interval_s):
            return 0
        pending = self.store.pending(job_id)
        held = [m for m in self.store.redis.lrange(s.queue, 0, -1) + self.store.redis.hvals("unacked")
                if job_id.encode() in m]
        resent = 0
        for chunk, args in sorted(pending.items()):
            mark = f"'{job_id}', {chunk},".encode()  # the task's argsrepr header, as Celery writes it
            if any(mark in message for message in held) or self.store.redis.exists(
                    self.store.key(job_id, f"working:{chunk}")):
                continue
            self.send(job_id, chunk, args["indices"], args["top_k"])
            resent += 1
        self.store.redis.hset(self.store.meta_key(job_id), "resent_at", time.time())
        if resent:
            self.store.redis.hincrby(self.store.meta_key(job_id), "resent", resent)
            current_app.logger.warning("job %s: sent %d lost chunk(s) again", job_id, resent)
        return resent


def register(app: Flask) -> None:
    """Add the job routes, their JOBS_* config defaults and their /metrics gauges to `app`."""
    for key, value in JobSettings().as_config().items():
        app.config.setdefault(key, value)
    queue = JobQueue(JobSettings.from_config(app.config), str(app.config["MODEL_PATH"]))
    app.extensions["jobs"] = queue
    app.extensions["tomato"].metrics.live.register(JobMetrics(queue.store, queue.settings.queue))
    app.register_blueprint(bp)


def jobs() -> JobQueue:
    return current_app.extensions["jobs"]


@bp.errorhandler(redis.exceptions.ConnectionError)
@bp.errorhandler(redis.exceptions.TimeoutError)
@bp.errorhandler(OperationalError)
def queue_unavailable(exc: Exception) -> tuple[Response, int, dict[str, str]]:
    current_app.logger.warning("job queue unavailable: %s", exc)
    error = ApiError(503, "queue_unavailable", "the job queue (Redis) is unavailable; retry shortly")
    return jsonify(error.to_dict()), 503, {"Retry-After": str(RETRY_AFTER_S)}


bp.before_request(require_token)  # every job route: results are the caller's data


@bp.post("/v1/jobs")
def submit() -> tuple[Response, int, dict[str, str]]:
    queue = jobs()
    settings = queue.settings
    preprocess, classes = queue.model()
    top_k = parse_top_k(classes)
    files = read_job_files(request, settings.max_images, settings.max_body_bytes)
    waiting = queue.waiting_images()
    if waiting >= settings.max_queued_images:
        raise ApiError(429, "queue_full", f"{waiting} images are waiting in the queue (bound "
                       f"{settings.max_queued_images}); retry later", {"Retry-After": "30"})
    job_id = queue.store.create([f.name for f in files], preprocess.image_size)
    try:
        queue_chunks(queue, job_id, files, preprocess, top_k)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OperationalError) as exc:
        try:
            queue.store.fail(job_id, f"the queue became unavailable while the job was being queued: {exc}")
        except redis.exceptions.RedisError:
            pass
        raise
    status_url = url_for("jobs.status", job_id=job_id)
    return (jsonify(job_id=job_id, status_url=status_url, total=len(files), state="queued"), 202,
            {"Location": status_url})


def queue_chunks(queue: JobQueue, job_id: str, files: list[JobFile], preprocess: PreprocessConfig,
                 top_k: int) -> None:
    """Decode and crop each file here; send full chunks as they fill, so workers start before the last decode."""
    max_pixels = int(current_app.config["MAX_IMAGE_PIXELS"])
    indices: list[int] = []
    crops: list[np.ndarray] = []
    errors: dict[int, dict[str, Any]] = {}
    chunk = 0
    for index, item in enumerate(files):
        try:
            crops.append(crop(preprocess, decode_image(item.data, max_pixels=max_pixels)))
            indices.append(index)
        except InvalidImage as exc:
            errors[index] = {"status": "error", "error": {"code": exc.code, "message": str(exc)}}
        if len(indices) == queue.settings.chunk_size:
            queue.enqueue(job_id, chunk, indices, crops, top_k)
            chunk, indices, crops = chunk + 1, [], []
    if indices:
        queue.enqueue(job_id, chunk, indices, crops, top_k)
        chunk += 1
    queue.store.redis.hset(queue.store.meta_key(job_id), "chunks", chunk)
    if errors:  # written last: when every image was bad, this write completes the job
        queue.store.write_results(job_id, errors)


def job_meta(job_id: str) -> dict[str, str]:
    meta = jobs().store.meta(job_id)
    if meta is None:
        raise ApiError(404, "job_not_found", f"no job {job_id!r}: unknown, or its results expired "
                       f"(kept {jobs().settings.result_ttl_s} s after the last change)")
    return meta


def progress(meta: dict[str, str], done: int) -> dict[str, Any]:
    """done/total, the rate since submission and the time left at that rate."""
    total = int(meta["total"])
    end = float(meta["finished"]) if "finished" in meta else time.time()
    elapsed = max(end - float(meta["created"]), 1e-6)
    rate = done / elapsed
    running = meta["state"] in ("queued", "running")
    eta = (total - done) / rate if running and rate > 0 else (0.0 if not running else None)
    return {"done": done, "total": total, "percent": round(100 * done / total, 1) if total else 100.0,
            "images_per_s": round(rate, 2), "eta_s": round(eta, 1) if eta is not None else None,
            "elapsed_s": round(elapsed, 2)}


def _time(meta: dict[str, str], key: str) -> float | None:
    return round(float(meta[key]), 3) if key in meta else None


@bp.get("/v1/jobs/<job_id>")
def status(job_id: str) -> Response:
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "csv"):
        raise ApiError(400, "bad_parameter", f"format must be json or csv, got {fmt!r}")
    store = jobs().store
    meta = job_meta(job_id)
    state = meta["state"]
    if state in ("queued", "running"):
        jobs().resend_lost(job_id, meta)
    if fmt == "csv":
        if state != "done":
            raise ApiError(409, "job_not_done", f"job {job_id} is {state}: the CSV exists once it is done")
        return csv_response(job_id, store.results(job_id))
    body: dict[str, Any] = {
        "job_id": job_id, "state": state, "progress": progress(meta, store.done_count(job_id)),
        "created_at": _time(meta, "created"), "started_at": _time(meta, "started"),
        "finished_at": _time(meta, "finished"), "error": meta.get("error"),
        "attempts": int(meta.get("attempts", 0)), "duplicates_ignored": int(meta.get("duplicates", 0)),
        "chunks_resent": int(meta.get("resent", 0)),
        "csv_url": url_for("jobs.status", job_id=job_id, format="csv"),
    }
    if state == "done":
        body["results"] = store.results(job_id)
    return jsonify(body)


def csv_response(job_id: str, results: list[dict[str, Any]]) -> Response:
    """The batch scorer's CSV layout (inference/rows.py), one row per image in upload order."""
    out = io.StringIO()
    write_rows(out, (prediction_row(r["file"], r) if r["status"] == "ok"
                     else error_row(r["file"], f"{r['error']['code']}: {r['error']['message']}") for r in results))
    return Response(out.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="job-{job_id}.csv"'})


@bp.delete("/v1/jobs/<job_id>")
def cancel(job_id: str) -> Response:
    store = jobs().store
    before = store.cancel(job_id)
    if before is None:
        job_meta(job_id)  # 404 with the reason
    if before in FINAL_STATES:
        raise ApiError(409, "job_finished", f"job {job_id} is already {before}")
    return jsonify(job_id=job_id, state="cancelled", progress=progress(job_meta(job_id), store.done_count(job_id)))
