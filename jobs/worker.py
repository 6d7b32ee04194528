"""Start a model worker: `python -m jobs.worker [--model PATH] [--concurrency 1] [--threads 1]`.

A Celery worker (prefork pool) on the job queue; every child process loads the model once, after the fork
(jobs/tasks.py). Settings come from TOMATO_JOBS_* variables (jobs/settings.py); it needs Redis, not the API.
Run one per core (or `--concurrency` children in one worker); on more machines, start more of them.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import serving  # first: it keeps Triton out of the model processes too (serving/__init__.py)
from jobs.settings import JobSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model bundle .pt (default: TOMATO_MODEL_PATH or the shipped one)")
    parser.add_argument("--concurrency", type=int, default=1, help="model processes in this worker (each its own copy)")
    parser.add_argument("--threads", type=int, default=None, help="forward threads per process (default 1)")
    parser.add_argument("--redis", default=None, help="Redis URL (default: TOMATO_JOBS_REDIS_URL or 127.0.0.1:6379)")
    parser.add_argument("--name", default=f"tomato-{os.getpid()}", help="worker name (unique per host)")
    parser.add_argument("--loglevel", default="info")
    args = parser.parse_args(argv)
    for variable, value in (("TOMATO_MODEL_PATH", args.model), ("TOMATO_JOBS_THREADS", args.threads),
                            ("TOMATO_JOBS_REDIS_URL", args.redis)):
        if value is not None:
            os.environ[variable] = str(value)  # read by every child after the fork
    model = os.environ.get("TOMATO_MODEL_PATH")
    if model and not Path(model).is_file():
        print(f"model bundle not found: {model}", file=sys.stderr)
        return 2
    from jobs.celery_app import make_celery

    settings = JobSettings.from_env()
    app = make_celery(settings)
    app.worker_main(["worker", "--pool", "prefork", "--concurrency", str(args.concurrency), "--queues", settings.queue,
                     "--hostname", f"{args.name}@%h", "--loglevel", args.loglevel, "--without-gossip",
                     "--without-mingle", "--without-heartbeat"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
