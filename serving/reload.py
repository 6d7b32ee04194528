"""Swap the served model without a failed request: `python -m serving.reload --url http://127.0.0.1:5000`.

Sends SIGHUP to the server's gunicorn master (found by the port it listens on, or --pid), which has every worker
load its model file (MODEL_PATH, e.g. trained_model/tomato_leaf_lite0.pt, or a symlink to the version wanted) again
in place (serving/swap.py), then waits until every worker has reported and prints what each one serves. Exit status
0 when every worker serves the file's model, 1 when a worker refused it (the old model keeps serving; the reason is
printed), 2 when the server did not answer in time. Rollback: put the old file back and run this again.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from urllib.parse import urlparse

import psutil
import requests


def _listens(process: psutil.Process, port: int) -> bool:
    try:
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                   for c in process.net_connections("tcp"))
    except psutil.Error:
        return False


def find_master(port: int) -> int:
    """The pid of gunicorn's master for `port`: a process listening on it, climbed up to the last ancestor that
    still listens (the master and its workers share one socket, which psutil reports under one of them only)."""
    found = {c.pid for c in psutil.net_connections("tcp")
             if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid}
    masters = set()
    for pid in found:
        process = psutil.Process(pid)
        while (parent := process.parent()) is not None and _listens(parent, port):
            process = parent
        masters.add(process.pid)
    if len(masters) != 1:
        raise SystemExit(f"cannot tell which process serves port {port} (found {sorted(found)}); pass --pid")
    return masters.pop()


def readiness(url: str, timeout: float = 10.0) -> dict:
    answer = requests.get(f"{url}/readyz", timeout=timeout)
    answer.raise_for_status()
    return answer.json()


def reload(url: str, pid: int, timeout_s: float = 300.0, out=sys.stdout) -> int:
    """Signal, wait for every worker's outcome, report; returns the exit status described above."""
    expected = int(readiness(url)["workers"])
    asked_at = time.time()
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            state = readiness(url)
        except requests.RequestException:
            continue
        swaps = [s for s in state["models"]["last_swaps"] if (s.get("requested_at") or 0) >= asked_at - 1
                 and s.get("finished_at")]
        if len(swaps) >= expected:
            refused = [s for s in swaps if s["state"] == "refused"]
            serving = ", ".join(f"{m['version']} ({(m['sha256'] or '')[:12]}) in {m['workers']} worker(s)"
                                for m in state["models"]["serving"])
            for s in refused:
                print(f"refused: {s['error']}", file=out)
            print(f"{'refused' if refused else 'done'}: serving {serving}", file=out)
            return 1 if refused else 0
    print(f"no answer from every worker within {timeout_s:.0f} s", file=out)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:5000", help="the running API")
    parser.add_argument("--pid", type=int, default=None, help="gunicorn master's pid (default: found by the port)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every worker")
    args = parser.parse_args(argv)
    pid = args.pid or find_master(urlparse(args.url).port or 80)
    return reload(args.url.rstrip("/"), pid, args.timeout)


if __name__ == "__main__":
    raise SystemExit(main())
