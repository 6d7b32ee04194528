"""`make run`: the API and the demo page together, stopped together by one Ctrl-C, with exit status 0.

Both servers run in their own process groups, so the terminal's Ctrl-C reaches only this launcher, which then stops
them the way each expects: SIGTERM to gunicorn's master (it finishes in-flight requests and stops its workers) and
to Streamlit, then SIGKILL to whatever of either group is still there after the grace period. A shell `trap 'kill 0'`
did this before and re-entered itself (make reported a segmentation fault), while the workers got the terminal's
SIGINT directly, in the middle of their own shutdown.

Usage: python run_all.py [--api-port 5000] [--page-port 8501]
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GRACE_S = 25.0  # gunicorn's graceful_timeout (20 s) plus a margin


def start(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """A child in its own session: the terminal's Ctrl-C goes to this launcher only."""
    return subprocess.Popen(command, cwd=HERE, env={**os.environ, **(env or {})}, start_new_session=True)


def stop_all(children: list[subprocess.Popen], grace_s: float = GRACE_S) -> None:
    """SIGTERM each child, wait up to `grace_s` for all of them, then SIGKILL each process group."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"run_all: pid {child.pid} did not stop in {grace_s:.0f} s; killing it", file=sys.stderr)
    for child in children:
        try:
            os.killpg(child.pid, signal.SIGKILL)  # leftovers of the group (orphaned workers); usually none
        except (ProcessLookupError, PermissionError):
            pass
        child.wait()


class StopFlag:
    """Set by SIGINT or SIGTERM. The handler only sets it: never re-entered, never raises. Install it before
    starting children, so a Ctrl-C during start-up still stops them."""

    def __init__(self) -> None:
        self.set = False
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.set = True


def supervise(children: dict[str, subprocess.Popen], stop: StopFlag, label: str) -> int:
    """Wait for a stop signal (status 0) or for any child to exit (its status, at least 1): one failing child (a
    port in use, a broken install) must bring the others down, not leave them running alone."""
    while not stop.set:
        exited = [(name, child) for name, child in children.items() if child.poll() is not None]
        if exited:
            name, child = exited[0]
            print(f"{label}: {name} exited with status {child.returncode}; stopping the rest", file=sys.stderr)
            return child.returncode or 1
        time.sleep(0.2)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api-port", type=int, default=5000)
    parser.add_argument("--page-port", type=int, default=8501)
    args = parser.parse_args(argv)

    stop = StopFlag()
    bin_dir = Path(sys.executable).parent
    api_url = f"http://127.0.0.1:{args.api_port}"
    children = {
        "the API": start([sys.executable, "flask_server.py", "--port", str(args.api_port)]),
        # the page's settings (no file watching, 127.0.0.1, no usage stats, theme) come from .streamlit/config.toml
        "the page": start([str(bin_dir / "streamlit"), "run", "streamlit.py", "--server.port", str(args.page_port)],
                          env={"TOMATO_API_URL": api_url}),
    }
    status = supervise(children, stop, "run_all")
    print("run_all: stopping the API and the page ...", flush=True)
    stop_all(list(children.values()))
    print("run_all: stopped", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
