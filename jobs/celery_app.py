"""The Celery application: Redis broker and result backend, chunks acknowledged late, one prefetched at a time.

Delivery guarantee: a chunk is acknowledged only after its results are in the store (acks_late). A worker that
dies holding one (kill -9, lost machine) leaves it unacknowledged in Redis; a live worker puts it back on the queue
once it is older than `visibility_timeout_s`, checked every `restore_interval_s`, so it is scored again within
about visibility_timeout_s + restore_interval_s (defaults 60 + 5 s). The result writes are idempotent
(jobs/store.py), so a chunk scored twice still counts once. A chunk must finish well within visibility_timeout_s
(16 images take well under a second), or it is handed out a second time while the first worker still runs.
A chunk that meets Redis restarting raises and stays unacknowledged, so it comes back the same way (jobs/tasks.py);
any other fault fails its job and the chunk is acknowledged.
"""
from __future__ import annotations

from celery import Celery

from jobs.settings import JobSettings

TASK_NAME = "jobs.score_chunk"


def make_celery(settings: JobSettings) -> Celery:
    """A Celery app for `settings`: used by the API to send chunks and by the workers to run them."""
    app = Celery("tomato_jobs", broker=settings.redis_url, backend=settings.redis_url, include=["jobs.tasks"])
    app.conf.update(
        task_default_queue=settings.queue,
        task_routes={TASK_NAME: {"queue": settings.queue}},
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_expires=settings.result_ttl_s,
        task_acks_late=True,  # acknowledged after the results are written
        task_acks_on_failure_or_timeout=False,  # a chunk that raised (Redis down mid-chunk) is delivered again
        task_reject_on_worker_lost=True,  # a child killed mid-chunk puts it back instead of failing it
        worker_prefetch_multiplier=1,  # a worker holds one chunk at a time: the others stay for other workers
        worker_proc_alive_timeout=600,  # a child loads the model before it says it is up (ONNX export on a busy CPU)
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": settings.restore_interval_s,
            "unacked_restore_throttle": 1,  # every interval really scans
            "socket_connect_timeout": 2,
        },
        result_backend_transport_options={"socket_connect_timeout": 2},
        redis_socket_connect_timeout=2,
        worker_send_task_events=False,
        task_track_started=False,
    )
    return app
