"""Bulk jobs against the local batch scorer, on the same images: `python -m bench.jobs_bench [--images 2000]`.

1. local: `inference.batch.score_folder` on a folder of N real photos (model loaded first, not timed);
2. the cluster (redis-server + API + 1 or 2 workers, all on this machine): one job of the same N photos, timed
   from the POST to the last result, CPU summed over every process of the cluster, per-image latency from the
   submission to the result write (p50/p99);
3. a worker killed with SIGKILL at about 30 % of a job: time to finish, images lost or answered twice;
4. Redis restarted between two submissions while the first job runs: jobs lost;
5. redis-benchmark at the job's message sizes (a chunk's crops, a Celery task message).

Writes the figures as JSON (--out) and prints them; BENCHMARKS.md quotes them. Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
import requests

from bench.cpu import session_cpu_s
from run_all import stop_all

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "plantvillage_tomato"
SAMPLES = ROOT / "inference_image"
VISIBILITY_TIMEOUT_S = 10  # redelivery bound in the kill run: visibility + restore interval
RESTORE_INTERVAL_S = 2


def build_folder(folder: Path, count: int) -> list[Path]:
    """`count` real photos: the 20 samples, then the PlantVillage classes in turn (symlinks, unique names)."""
    classes = sorted(p for p in DATA.iterdir() if p.is_dir())
    per_class = [sorted(c.glob("*.jpg")) for c in classes]
    sources = itertools.chain(sorted(SAMPLES.glob("*.jpg")),
                              (p for group in itertools.zip_longest(*per_class) for p in group if p))
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, source in zip(range(count), sources):
        target = folder / f"{i:05d}_{source.name}"
        target.symlink_to(source)
        files.append(target)
    return files


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def local_run(folder: Path, out: Path) -> dict:
    from inference.batch import score_folder
    from inference.bundle import load_bundle

    bundle = load_bundle()
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    counts = score_folder(folder, out, bundle=bundle)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    n = counts["ok"] + counts["error"]
    return {"images": n, "wall_s": round(wall, 2), "images_per_s": round(n / wall, 1),
            "cpu_ms_per_image": round(1000 * cpu / n, 2), "errors": counts["error"]}


class Cluster:
    """redis-server, the API (one gunicorn worker) and model workers, each in its own session."""

    def __init__(self, workdir: Path, workers: int, threads: int = 1, chunk_size: int = 16) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.api_port = _free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.redis_url = f"redis://127.0.0.1:{self.port}/0"
        self.env = {**os.environ, "TOMATO_JOBS_REDIS_URL": self.redis_url, "TOMATO_JOBS_CHUNK_SIZE": str(chunk_size),
                    "TOMATO_JOBS_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
                    "TOMATO_JOBS_RESTORE_INTERVAL_S": str(RESTORE_INTERVAL_S), "TOMATO_JOBS_THREADS": str(threads)}
        self.redis = self._start_redis()
        self.client = redis.Redis(port=self.port)
        _wait(lambda: _ping(self.client), 30, "redis")
        self.api = self._start([sys.executable, "flask_server.py", "--port", str(self.api_port), "--workers", "1"],
                               "api.log")
        self.workers = [self._start([sys.executable, "-m", "jobs.worker", "--name", f"b{i}"], f"worker{i}.log")
                        for i in range(workers)]
        _wait(lambda: requests.get(self.url + "/readyz", timeout=5).ok, 300, "the API")
        _wait(lambda: len(list(self.client.scan_iter(match="tomato:worker:*"))) >= workers, 300, "the workers")

    def _start_redis(self) -> subprocess.Popen:
        return subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind",
                                 "127.0.0.1", "--dir", str(self.workdir), "--appendonly", "yes", "--save", ""],
                                stdout=subprocess.DEVNULL, start_new_session=True)

    def _start(self, command: list[str], log: str) -> subprocess.Popen:
        return subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=open(self.workdir / log, "w"),
                                stderr=subprocess.STDOUT, start_new_session=True)

    def cpu_s(self) -> dict[str, float]:
        return {"api": session_cpu_s(self.api.pid), "workers": sum(session_cpu_s(w.pid) for w in self.workers),
                "redis": session_cpu_s(self.redis.pid)}

    def restart_redis(self) -> float:
        """SIGTERM (redis writes its append-only file), start again on the same port; returns seconds down."""
        started = time.perf_counter()
        self.redis.terminate()
        self.redis.wait(30)
        self.redis = self._start_redis()
        _wait(lambda: _ping(self.client), 30, "redis after the restart")
        return time.perf_counter() - started

    def stop(self) -> None:
        stop_all([self.api, *self.workers], grace_s=30)
        stop_all([self.redis], grace_s=30)  # last: workers hand back what they hold before Redis goes


def submit(url: str, files: list[Path]) -> dict:
    parts = [("file", (path.name, path.read_bytes())) for path in files]
    for _ in range(60):  # a 503 while Redis restarts: retry, as a client should
        response = requests.post(f"{url}/v1/jobs", files=parts, timeout=600)
        if response.status_code != 503:
            break
        time.sleep(float(response.headers.get("Retry-After", "1")))
    response.raise_for_status()
    return response.json()


def wait_done(url: str, status_url: str, on_progress=None, timeout: float = 1800) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = requests.get(url + status_url, timeout=60)
        if response.status_code == 503:
            time.sleep(0.5)
            continue
        body = response.json()
        if on_progress:
            on_progress(body)
        if body["state"] not in ("queued", "running"):
            return body
        time.sleep(0.1)
    raise TimeoutError(status_url)


def job_figures(body: dict, wall: float, cpu_before: dict, cpu_after: dict, client_cpu: float) -> dict:
    results = body["results"]
    n = len(results)
    latency = [r["done_at"] - body["created_at"] for r in results if r["status"] == "ok"]
    waits = [r["timing_ms"]["wait"] for r in results if r["status"] == "ok"]
    cpu = {k: round(1000 * (cpu_after[k] - cpu_before[k]) / n, 2) for k in cpu_after}
    return {"images": n, "wall_s": round(wall, 2), "images_per_s": round(n / wall, 1),
            "latency_from_submit_s": {"p50": round(percentile(latency, 50), 2), "p99": round(percentile(latency, 99), 2)},
            "queue_wait_ms": {"p50": round(percentile(waits, 50), 1), "p99": round(percentile(waits, 99), 1)},
            "cpu_ms_per_image": {**cpu, "total": round(sum(cpu.values()), 2),
                                 "client": round(1000 * client_cpu / n, 2)},
            "answered": len({r["index"] for r in results}), "duplicates_ignored": body["duplicates_ignored"],
            "errors": sum(r["status"] == "error" for r in results)}


def cluster_run(workdir: Path, files: list[Path], workers: int, threads: int = 1) -> dict:
    cluster = Cluster(workdir, workers, threads)
    try:
        wait_done(cluster.url, submit(cluster.url, files[:64])["status_url"])  # warm-up: connections, first chunks
        before, own_before = cluster.cpu_s(), _own_cpu()
        started = time.perf_counter()
        job = submit(cluster.url, files)
        body = wait_done(cluster.url, job["status_url"])
        wall = time.perf_counter() - started
        figures = job_figures(body, wall, before, cluster.cpu_s(), _own_cpu() - own_before)
        return {"workers": workers, "threads": threads, **figures}
    finally:
        cluster.stop()


def kill_run(workdir: Path, files: list[Path]) -> dict:
    cluster = Cluster(workdir, 2)
    try:
        started = time.perf_counter()
        job = submit(cluster.url, files)
        killed_at: list[float] = []

        def kill_at_30_percent(body: dict) -> None:
            if not killed_at and body["progress"]["done"] >= 0.3 * body["progress"]["total"]:
                os.killpg(cluster.workers[0].pid, signal.SIGKILL)
                killed_at.append(time.perf_counter() - started)

        body = wait_done(cluster.url, job["status_url"], kill_at_30_percent)
        wall = time.perf_counter() - started
        chunks = int(cluster.client.hget(f"tomato:jobmeta:{job['job_id']}", "chunks"))
        indices = [r["index"] for r in body["results"]]
        return {"images": len(files), "state": body["state"], "wall_s": round(wall, 2),
                "killed_at_s": round(killed_at[0], 2) if killed_at else None,
                "lost": len(files) - len(set(indices)), "answered_twice": len(indices) - len(set(indices)),
                "duplicate_writes_refused": body["duplicates_ignored"], "chunks": chunks,
                "chunk_attempts": body["attempts"], "redelivery_bound_s": VISIBILITY_TIMEOUT_S + RESTORE_INTERVAL_S}
    finally:
        cluster.stop()


def restart_run(workdir: Path, files: list[Path]) -> dict:
    """Job A submitted and running, Redis restarted, job B submitted (retrying 503s): both must finish whole."""
    cluster = Cluster(workdir, 2)
    try:
        first = submit(cluster.url, files)
        down_s = cluster.restart_redis()
        second = submit(cluster.url, files[:200])
        bodies = [wait_done(cluster.url, job["status_url"]) for job in (first, second)]
        return {"jobs": 2, "redis_down_s": round(down_s, 2), "first_job_chunk_attempts": bodies[0]["attempts"],
                "first_job_chunks": int(cluster.client.hget(f"tomato:jobmeta:{first['job_id']}", "chunks")),
                "done": sum(b["state"] == "done" and len({r["index"] for r in b["results"]}) == b["progress"]["total"]
                            for b in bodies),
                "states": [b["state"] for b in bodies]}
    finally:
        cluster.stop()


def redis_benchmark(workdir: Path, chunk_bytes: int) -> dict:
    """SET/GET of one chunk's crops, LPUSH/RPOP of a ~1 KB Celery message, on a fresh redis-server."""
    port = _free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait(lambda: _ping(redis.Redis(port=port)), 30, "redis")
        figures = {}
        for tests, size, n in (("set,get", chunk_bytes, 1000), ("lpush,rpop", 1024, 100_000)):
            output = subprocess.run(["redis-benchmark", "-p", str(port), "-q", "-n", str(n), "-d", str(size),
                                     "-c", "4", "-t", tests], capture_output=True, text=True, timeout=600).stdout
            for name, rate in re.findall(r"([A-Z]+): ([\d.]+) requests per second", output.replace("\r", "\n")):
                figures[f"{name} {size} B"] = float(rate)
        return figures
    finally:
        stop_all([server], grace_s=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("bench/jobs_results.json"))
    parser.add_argument("--skip", nargs="*", default=[], help="parts to leave out: local cluster kill restart redis")
    args = parser.parse_args(argv)
    report: dict = {"images": args.images, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                    "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="jobs-bench-") as tmp:
        work = Path(tmp)
        files = build_folder(work / "photos", args.images)
        if "local" not in args.skip:
            report["local"] = local_run(work / "photos", work / "local.csv")
            print("local", report["local"], flush=True)
        if "cluster" not in args.skip:
            report["cluster"] = []
            for workers, threads in ((1, 1), (1, 2), (2, 1)):
                (work / f"c{workers}{threads}").mkdir()
                report["cluster"].append(cluster_run(work / f"c{workers}{threads}", files, workers, threads))
                print("cluster", report["cluster"][-1], flush=True)
        if "kill" not in args.skip:
            (work / "kill").mkdir()
            report["kill"] = kill_run(work / "kill", files)
            print("kill", report["kill"], flush=True)
        if "restart" not in args.skip:
            (work / "restart").mkdir()
            report["restart"] = restart_run(work / "restart", files[:1000])
            print("restart", report["restart"], flush=True)
        if "redis" not in args.skip:
            report["redis_benchmark"] = redis_benchmark(work, 16 * 3 * 160 * 160)
            print("redis-benchmark", report["redis_benchmark"], flush=True)
    report["load_after"] = os.getloadavg()
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
