"""Job-queue settings, one dataclass read by both tiers: Flask config keys JOBS_* on the API (so TOMATO_JOBS_*
variables and `create_app(test_config)` set them), TOMATO_JOBS_* environment variables on the workers."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, Mapping


@dataclass(frozen=True)
class JobSettings:
    redis_url: str = "redis://127.0.0.1:6379/0"  # broker, Celery result backend and job store (one Redis)
    queue: str = "tomato-jobs"  # the Celery queue (a Redis list of chunk tasks) workers consume
    chunk_size: int = 16  # images per task: one batched forward each
    max_images: int = 10_000  # images per job; more gets 413
    max_queued_images: int = 50_000  # images waiting in the queue (chunks x chunk_size); above it a new job gets 429
    max_body_bytes: int = 512 * 1024 * 1024  # request body of POST /v1/jobs (the rest of the API keeps its limit)
    result_ttl_s: int = 24 * 3600  # a job's keys (inputs, results, state) expire this long after its last write
    visibility_timeout_s: int = 60  # a chunk taken by a worker that died is queued again after this (+ restore)
    restore_interval_s: int = 5  # how often live workers look for such chunks
    threads: int = 1  # forward threads per worker process (scale with processes: one per core)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "JobSettings":
        """From Flask config keys JOBS_REDIS_URL, JOBS_CHUNK_SIZE, ... (missing keys keep the defaults)."""
        values = {f.name: config[f"JOBS_{f.name.upper()}"] for f in fields(cls) if f"JOBS_{f.name.upper()}" in config}
        return cls(**{k: _typed(cls, k, v) for k, v in values.items()})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "JobSettings":
        """From TOMATO_JOBS_* environment variables (the workers' configuration)."""
        environ = os.environ if environ is None else environ
        return cls.from_config({k.removeprefix("TOMATO_"): v for k, v in environ.items() if k.startswith("TOMATO_JOBS_")})

    def as_config(self) -> dict[str, Any]:
        """The Flask config keys with these values."""
        return {f"JOBS_{f.name.upper()}": getattr(self, f.name) for f in fields(self)}


def _typed(cls: type, name: str, value: Any) -> Any:
    kind = next(f.type for f in fields(cls) if f.name == name)
    return int(value) if kind == "int" else str(value)
