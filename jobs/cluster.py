"""`make cluster`: redis-server, the API and N model workers on this machine, stopped together by one Ctrl-C.

Redis keeps an append-only file (fsync every second) in RUN_DIR, so queued jobs survive a Redis restart. The same
processes on several machines: one redis-server, the API wherever clients reach it, `python -m jobs.worker` on
every machine that reaches Redis (deploy/ has compose and Kubernetes files for that).

Usage: python -m jobs.cluster [--api-port 5000] [--redis-port 6379] [--workers 2] [--run-dir .cluster]
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from run_all import StopFlag, start, stop_all, supervise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api-port", type=int, default=5000)
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--workers", type=int, default=2, help="model workers (one process each)")
    parser.add_argument("--threads", type=int, default=1, help="forward threads per worker")
    parser.add_argument("--api-workers", type=int, default=1, help="API processes (they decode and crop uploads)")
    parser.add_argument("--run-dir", type=Path, default=Path(".cluster"), help="Redis data and logs")
    args = parser.parse_args(argv)
    redis_server = shutil.which("redis-server")
    if not redis_server:
        print("redis-server is not installed: run `make redis`", file=sys.stderr)
        return 2
    args.run_dir.mkdir(parents=True, exist_ok=True)
    redis_url = f"redis://127.0.0.1:{args.redis_port}/0"
    env = {"TOMATO_JOBS_REDIS_URL": redis_url}
    stop = StopFlag()
    children = {"redis": start([redis_server, "--port", str(args.redis_port), "--bind", "127.0.0.1", "--dir",
                                str(args.run_dir.resolve()), "--appendonly", "yes", "--save", ""])}
    children["the API"] = start([sys.executable, "flask_server.py", "--port", str(args.api_port), "--workers",
                                 str(args.api_workers)], env=env)
    for i in range(args.workers):
        children[f"worker {i}"] = start([sys.executable, "-m", "jobs.worker", "--name", f"w{i}", "--threads",
                                         str(args.threads)], env=env)
    print(f"cluster: Redis {redis_url}, API http://127.0.0.1:{args.api_port}, {args.workers} workers "
          f"(submit: curl -F file=@a.jpg -F file=@b.jpg http://127.0.0.1:{args.api_port}/v1/jobs)", flush=True)
    status = supervise(children, stop, "cluster")
    print("cluster: stopping ...", flush=True)
    stop_all([c for n, c in children.items() if n != "redis"])
    stop_all([children["redis"]])  # last: workers hand back what they hold before Redis goes
    print("cluster: stopped", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
