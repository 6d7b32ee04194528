"""The hostile round of issue 15: hostile requests and slow sockets against a live server, with worker RSS.

    .venv/bin/python -m bench.hostile --model trained_model/tomato_leaf_lite0.pt --out hostile.json
    .venv/bin/python -m bench.hostile --server-env MALLOC_ARENA_MAX=2 ...   (A/B a setting)

1. starts `flask_server.py` (its defaults: gunicorn, one worker per core) on a free loopback port and warms it
   with normal requests (leaf photos and 12-MP phone photos): RSS after warm-up;
2. sends each request of bench/hostile_requests.py `--repeat` times at once: answers, seconds, RSS after each;
3. RSS after the round, after `--idle` seconds, and after `--after` more normal requests; worker restarts;
4. opens `--slow` slowloris sockets straight to gunicorn, then to nginx (deploy/nginx.conf) in front of it, and
   measures a normal client's latency meanwhile (`--probes` sequential requests each, 5-s timeout).
All traffic goes to 127.0.0.1; everything started is stopped on every path.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench import systems
from bench.hostile_requests import HostileRequest, describe, hostile_requests
from bench.inputs import prepare_inputs
from bench.loadgen import percentile
from bench.nginx_front import NginxFront
from bench.overload import worker_pids, workers_rss_kib
from bench.slow_clients import SlowClients

ROOT = Path(__file__).resolve().parent.parent


def mib(kib: int | None) -> float | None:
    return round(kib / 1024, 1) if kib else None


def normal_requests(url: str, leaf: bytes, phone: bytes, count: int) -> list[int]:
    statuses = []
    for i in range(count):
        data = phone if i % 10 == 9 else leaf  # one phone photo in ten
        statuses.append(requests.post(f"{url}/predict", files={"file": ("leaf.jpg", data)}, timeout=60).status_code)
    return statuses


def probe_latency(url: str, leaf: bytes, probes: int) -> dict:
    latencies, failures = [], []
    for _ in range(probes):
        started = time.perf_counter()
        try:
            response = requests.post(f"{url}/predict", files={"file": ("leaf.jpg", leaf)}, timeout=5)
            if response.status_code != 200:
                failures.append(str(response.status_code))
            else:
                latencies.append(time.perf_counter() - started)
        except requests.RequestException as exc:
            failures.append(type(exc).__name__)
    latencies.sort()
    return {"answered": len(latencies), "failed": len(failures), "failures": sorted(set(failures)),
            "p50_ms": round(1000 * percentile(latencies, 50), 1) if latencies else None,
            "p99_ms": round(1000 * percentile(latencies, 99), 1) if latencies else None}


def slow_round(host_port: int, url: str, leaf: bytes, slow: int, probes: int) -> dict:
    with SlowClients("127.0.0.1", host_port, slow, interval_s=1.0, max_seconds=300) as clients:
        time.sleep(3)  # every socket has sent its first lines
        result = probe_latency(url, leaf, probes)
        result.update(slow_sockets=slow, still_open=clients.open_count(), connect_failures=clients.connect_failures)
    return result


def send_timed(hostile: HostileRequest, base: str) -> tuple[str, float]:
    started = time.perf_counter()
    try:
        answer = describe(hostile.send(base))
    except requests.RequestException as exc:
        answer = type(exc).__name__
    return answer, time.perf_counter() - started


def run(model: Path, work: Path, repeat: int, idle: float, after: int, slow: int, probes: int,
        server_env: dict[str, str]) -> dict:
    inputs = prepare_inputs(work, ("leaf", "phone"))
    leaf, phone = inputs["leaf"].read(), inputs["phone"].read()
    server = systems.ours(model, work, server_env)
    base = server.predict_url.rsplit("/", 1)[0]
    port = int(base.rsplit(":", 1)[1])
    summary: dict = {"server_env": server_env, "repeat": repeat}
    try:
        server.start().wait_ready()
        pids = worker_pids(server.pid)
        summary["rss_ready_mib"] = mib(workers_rss_kib(pids))
        assert set(normal_requests(base, leaf, phone, 200)) == {200}
        summary["rss_warm_mib"] = mib(workers_rss_kib(pids))
        rows = []
        for hostile in hostile_requests():
            with ThreadPoolExecutor(repeat) as pool:  # `repeat` copies at once, as an attacker would
                results = list(pool.map(lambda _: send_timed(hostile, base), range(repeat)))
            rows.append({"name": hostile.name, "what": hostile.what, "answers": sorted({a for a, _ in results}),
                         "max_s": round(max(s for _, s in results), 2), "rss_after_mib": mib(workers_rss_kib(pids))})
            print(json.dumps(rows[-1]), flush=True)
        summary["hostile"] = rows
        summary["rss_after_round_mib"] = mib(workers_rss_kib(pids))
        time.sleep(idle)
        summary[f"rss_after_{idle:.0f}s_idle_mib"] = mib(workers_rss_kib(pids))
        statuses = normal_requests(base, leaf, phone, after)
        summary["normal_after_ok"] = statuses.count(200)
        summary[f"rss_after_{after}_normal_mib"] = mib(workers_rss_kib(pids))
        summary["worker_restarts"] = len(set(worker_pids(server.pid)) - set(pids))
        print(json.dumps({k: v for k, v in summary.items() if k != "hostile"}), flush=True)
        if slow:
            summary["slow_direct"] = slow_round(port, base, leaf, slow, probes)
            print(json.dumps(summary["slow_direct"]), flush=True)
            time.sleep(2)
            with NginxFront(upstream_port=port, listen_port=systems.free_port()) as front:
                summary["slow_behind_nginx"] = slow_round(front.port, front.url, leaf, slow, probes)
            print(json.dumps(summary["slow_behind_nginx"]), flush=True)
    finally:
        server.stop()
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "trained_model" / "tomato_leaf_lite0.pt")
    parser.add_argument("--repeat", type=int, default=3, help="copies of each hostile request sent at once")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle after the round")
    parser.add_argument("--after", type=int, default=400, help="normal requests after the idle time")
    parser.add_argument("--slow", type=int, default=1000, help="slowloris sockets (0: skip that part)")
    parser.add_argument("--probes", type=int, default=100, help="normal requests while the slow sockets are open")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON summary here")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.server_env)
    with tempfile.TemporaryDirectory(prefix="tomato-hostile-") as work:
        summary = run(args.model, Path(work), args.repeat, args.idle, args.after, args.slow, args.probes, env)
    text = json.dumps(summary, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
