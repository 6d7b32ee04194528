"""Our server against itself: two (or more) checkouts or settings up at once, measured in turns.

    git worktree add /tmp/before HEAD~1
    .venv/bin/python -m bench.ab --input phone --clients 16 --rounds 3 --seconds 10 \
        "DIR=/tmp/before" "DIR=."  ["TOMATO_MEMORY_GUARD=off" ...]

Each config is `NAME=VALUE` words: `DIR=` is the checkout whose `flask_server.py` runs (default: this one, with
this repository's .venv), every other word goes into the server's environment. All servers start at once (default
settings, the shipped model or `--model`); each round loads each one for `--seconds` at `--clients` closed-loop clients, in
alternating order, so a host that drifts (this 2-vCPU VM does, by 1.5x within minutes) drifts for all of them
alike. Per config and round: answers per second, server CPU ms per answer (every process of the server,
bench/cpu.py) and minor page faults per answer; at the end, each server's PSS and the medians.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.cpu import server_pids, session_cpu_s, session_memory_kib
from bench.inputs import prepare_inputs
from bench.loadgen import run_load
from bench.systems import free_port

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"


def minor_faults(session_id: int) -> int:
    """Minor page faults of every process of the server (field minflt of /proc/PID/stat)."""
    total = 0
    for pid in server_pids(session_id):
        try:
            total += int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])
        except OSError:  # the process ended meanwhile
            pass
    return total


def start(config: str, port: int, work: Path, model: Path | None) -> subprocess.Popen:
    settings = dict(word.split("=", 1) for word in config.split())
    checkout = Path(settings.pop("DIR", ROOT)).resolve()
    env = {**os.environ, "TOMATO_FEEDBACK_DIR": str(work / f"feedback-{port}"), **settings}
    model_args = ["--model", str(model)] if model else []
    return subprocess.Popen([str(PYTHON), "flask_server.py", "--port", str(port), *model_args], cwd=checkout, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(work / f"server-{port}.log", "w"),
                            start_new_session=True)


def wait_ready(port: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the server on port {port} did not get ready in {timeout_s:.0f} s")


@dataclass
class Summary:
    config: str
    rounds: list[tuple[float, float, float]]  # (req/s, server CPU ms per answer, page faults per answer)
    pss_mib: int


def compare(configs: list[str], input_name: str = "phone", clients: int = 16, rounds: int = 3,
            seconds: float = 10.0, model: Path | None = None) -> list[Summary]:
    """Start every config at once, measure them in alternating turns, stop them; one summary per config."""
    work = Path(tempfile.mkdtemp(prefix="tomato-ab-"))
    data = prepare_inputs(work / "inputs", (input_name,))[input_name].read()
    ports = [free_port() for _ in configs]
    servers = [start(config, port, work, model) for config, port in zip(configs, ports)]
    results: list[list[tuple[float, float, float]]] = [[] for _ in servers]
    try:
        for port in ports:
            wait_ready(port)
            run_load(f"http://127.0.0.1:{port}/predict", data, clients, 3.0)  # warm every path
        for round_index in range(rounds):
            order = list(range(len(servers)))[:: 1 if round_index % 2 == 0 else -1]
            for i in order:
                cpu_before, faults_before = session_cpu_s(servers[i].pid), minor_faults(servers[i].pid)
                load = run_load(f"http://127.0.0.1:{ports[i]}/predict", data, clients, seconds, warmup_s=0.5)
                answers = max(1, load.completed)
                cpu_ms = (session_cpu_s(servers[i].pid) - cpu_before) * 1000 / answers
                faults = (minor_faults(servers[i].pid) - faults_before) / answers
                results[i].append((load.throughput, cpu_ms, faults))
                print(f"round {round_index + 1} [{configs[i]}]: {load.throughput:.1f} req/s, server CPU "
                      f"{cpu_ms:.2f} ms/answer, {faults:.0f} page faults/answer, errors {load.errors}", flush=True)
        return [Summary(config, rows, session_memory_kib(server.pid)["pss_kib"] // 1024)
                for config, rows, server in zip(configs, results, servers)]
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help='e.g. "DIR=/tmp/before" "DIR=. TOMATO_MEMORY_GUARD=off"')
    parser.add_argument("--input", default="phone", choices=("leaf", "phone"))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--model", type=Path, default=None, help="model bundle .pt (default: the shipped one)")
    args = parser.parse_args(argv)
    for summary in compare(args.configs, args.input, args.clients, args.rounds, args.seconds, args.model):
        rows = summary.rounds
        print(f"[{summary.config}]: median {statistics.median(r[0] for r in rows):.1f} req/s, "
              f"{statistics.median(r[1] for r in rows):.2f} ms CPU/answer, "
              f"{statistics.median(r[2] for r in rows):.0f} page faults/answer; "
              f"PSS after the load {summary.pss_mib} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
