"""Run the locust overload ramp against our server and watch its memory.

    .venv/bin/python -m bench.overload --model trained_model/tomato_leaf_lite0.pt --users 200 --rate 20 --seconds 60

Starts `flask_server.py` on a free loopback port, warms it, reads the gunicorn worker's VmRSS, runs
`locust -f bench/locustfile.py --headless ...` (CSV output kept in the work dir), samples VmRSS every
second during the run, reads it again after, stops the server and prints a JSON summary.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from importlib.metadata import version
from pathlib import Path

import requests

from bench import systems
from bench.loadgen import percentile

ROOT = Path(__file__).resolve().parent.parent


def worker_pids(master: int) -> list[int]:
    """gunicorn's workers (each holds a model copy) are the master's children; fall back to the master."""
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        return [int(child) for child in children] or [master]
    except OSError:
        return [master]


def workers_rss_kib(pids: list[int]) -> int | None:
    """VmRSS summed over the workers (None if none could be read)."""
    sizes = [size for size in (systems.vm_rss_kib(pid) for pid in pids) if size]
    return sum(sizes) if sizes else None


def run_overload(model: Path, image: Path, work: Path, users: int = 200, rate: int = 20, seconds: int = 60,
                 server_env: dict[str, str] | None = None, honor_retry_after: bool = False, rounds: int = 1) -> dict:
    """`rounds` > 1 repeats the ramp on the same server: the RSS after each round tells a plateau from a leak;
    the request statistics are those of the first round."""
    work.mkdir(parents=True, exist_ok=True)
    locust = shutil.which("locust", path=str(Path(sys.executable).parent)) or shutil.which("locust")
    if not locust:
        return {"error": "locust is not installed (pip install -r bench/requirements.txt)"}
    server = systems.ours(model, work, server_env)
    summary: dict = {"users": users, "rate": rate, "seconds": seconds, "locust_version": version("locust"),
                     "server_env": " ".join(f"{k}={v}" for k, v in (server_env or {}).items()),
                     "honor_retry_after": honor_retry_after}
    try:
        server.start().wait_ready()
        base = server.predict_url.rsplit("/", 1)[0]
        session = requests.Session()
        for _ in range(20):  # warm: first requests allocate buffers, fill the allocator's pools
            session.post(server.predict_url, data=image.read_bytes(), headers={"Content-Type": "image/jpeg"}, timeout=30)
        pids = worker_pids(server.pid)
        summary["workers"] = len(pids)
        summary["rss_before_kib"] = workers_rss_kib(pids)
        peak = [summary["rss_before_kib"] or 0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(1.0):
                rss = workers_rss_kib(pids)
                if rss:
                    peak[0] = max(peak[0], rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        summary["rss_after_round_kib"] = []
        for round_no in range(rounds):
            prefix = work / ("locust" if round_no == 0 else f"locust-round{round_no + 1}")
            samples = work / ("samples.csv" if round_no == 0 else f"samples-round{round_no + 1}.csv")
            cmd = [locust, "-f", str(ROOT / "bench" / "locustfile.py"), "--headless", "-u", str(users), "-r",
                   str(rate), "-t", f"{seconds}s", "--host", base, "--csv", str(prefix), "--csv-full-history",
                   "--only-summary", "--stop-timeout", "15", "--loglevel", "WARNING"]
            if round_no == 0:
                summary["command"] = " ".join(["locust", *cmd[1:]]).replace(str(ROOT) + "/", "").replace(str(work), "$WORK")
            env = {"BENCH_IMAGE": str(image), "BENCH_SAMPLES": str(samples),
                   "BENCH_HONOR_RETRY_AFTER": "1" if honor_retry_after else "0"}
            done = subprocess.run(cmd, cwd=ROOT, env={**__import__("os").environ, **env}, capture_output=True,
                                  text=True, timeout=seconds + 120)
            (work / f"locust-{round_no + 1}.log").write_text(done.stdout + done.stderr)
            time.sleep(2.0)
            summary["rss_after_round_kib"].append(workers_rss_kib(pids))
        samples = work / "samples.csv"
        prefix = work / "locust"
        summary["rounds"] = rounds
        time.sleep(2.0)  # let in-flight requests drain before reading memory again
        stop.set()
        sampler.join(5)
        summary["rss_after_kib"] = workers_rss_kib(pids)
        summary["rss_peak_kib"] = peak[0]
        summary["ready_after"] = requests.get(base + "/readyz", timeout=5).status_code
        summary.update(summarise_samples(samples))
        summary["locust_csv"] = str(prefix) + "_*.csv"
    except Exception as exc:
        summary["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        server.stop()
    return summary


def summarise_samples(path: Path) -> dict:
    """Per-request samples -> totals by status, where 429s start, and a table per user count."""
    rows = list(csv.DictReader(path.open()))
    if not rows:
        return {"error": "locust wrote no samples", "total": 0}
    start = min(float(r["time"]) for r in rows)
    by_status: dict[str, int] = defaultdict(int)
    for r in rows:
        by_status["timeout/conn" if r["status"] == "0" else r["status"]] += 1
    first_429 = min((r for r in rows if r["status"] == "429"), key=lambda r: float(r["time"]), default=None)
    # one-second windows since the first request; each is filed under the highest user count seen in it
    windows: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        windows[int(float(r["time"]) - start)].append(r)
    max_users = max(int(r["users"]) for r in rows)
    bucket = max(1, -(-max_users // 10))  # about ten user buckets
    grouped: dict[int, list[list[dict]]] = defaultdict(list)
    for second in sorted(windows):
        users = max(int(r["users"]) for r in windows[second])
        grouped[-(-users // bucket) * bucket].append(windows[second])
    steps = []
    for users in sorted(grouped):
        group = [r for window in grouped[users] for r in window]
        seconds_in = len(grouped[users])
        ok = sorted(float(g["ms"]) for g in group if g["status"] == "200")
        steps.append({
            "users": users, "seconds": seconds_in, "rps": len(group) / seconds_in, "ok_rps": len(ok) / seconds_in,
            "r429": sum(g["status"] == "429" for g in group) / seconds_in,
            "other_err": sum(g["status"] not in ("200", "429") for g in group) / seconds_in,
            "p50_ms": percentile(ok, 50), "p99_ms": percentile(ok, 99),
        })
    # worst p99 of successful answers over 1-second windows (after the first second)
    p99s = []
    for second, window in windows.items():
        ok = sorted(float(r["ms"]) for r in window if r["status"] == "200")
        if second >= 1 and len(ok) >= 5:
            p99s.append(percentile(ok, 99))
    every_ok = sorted(float(r["ms"]) for r in rows if r["status"] == "200")
    return {
        "total": len(rows), "by_status": dict(sorted(by_status.items())),
        "first_429_users": int(first_429["users"]) if first_429 else None,
        "first_429_s": (float(first_429["time"]) - start) if first_429 else None,
        "p99_ok_ms_max": max(p99s) if p99s else None,
        "p50_ms": percentile(every_ok, 50), "p95_ms": percentile(every_ok, 95), "p99_ms": percentile(every_ok, 99),
        "steps": steps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "trained_model" / "tomato_leaf_lite0.pt")
    parser.add_argument("--image", type=Path, default=ROOT / "inference_image" / "Early_blight_1.jpg")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--rate", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--honor-retry-after", action="store_true")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the ramp on the same server (RSS plateau vs. leak)")
    parser.add_argument("--ours-env", action="append", default=[], metavar="TOMATO_X=V")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    from bench.run import parse_env

    work = args.work or Path(tempfile.mkdtemp(prefix="tomato-overload-"))
    summary = run_overload(args.model, args.image, work, args.users, args.rate, args.seconds,
                           parse_env(args.ours_env), args.honor_retry_after, args.rounds)
    print(json.dumps(summary, indent=1))
    return 1 if summary.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
