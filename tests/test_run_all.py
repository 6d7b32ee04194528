"""`make run` (run_all.py) as a person uses it: both servers up, one "API ready" line, then one Ctrl-C stops both
with exit status 0 and frees both ports; and the install-time ONNX export that keeps the first start short."""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import requests
from support import ROOT, free_port, wait_until_ready

from inference.bundle import load_bundle
from inference.engines import default_cache_dir
from inference.export import export_for_serving

START_DEADLINE_S = 300  # the shipped model in two workers plus Streamlit, on a possibly busy 2-core machine


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_ctrl_c_stops_the_api_and_the_page_cleanly(tmp_path):
    api_port, page_port = free_port(), free_port()
    log_path = tmp_path / "run_all.log"
    env = {**os.environ, "TOMATO_FEEDBACK_DIR": str(tmp_path / "feedback"), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        launcher = subprocess.Popen(  # a session of its own, like a terminal's foreground job
            [sys.executable, "run_all.py", "--api-port", str(api_port), "--page-port", str(page_port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    processes: list[psutil.Process] = []
    try:
        wait_until_ready(f"http://127.0.0.1:{api_port}", START_DEADLINE_S, alive=lambda: launcher.poll() is None)
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline and "API ready on" not in log_path.read_text():
            time.sleep(0.2)  # /readyz can answer a moment before the worker that announces has printed
        page = requests.get(f"http://127.0.0.1:{page_port}/_stcore/health", timeout=30)
        assert page.status_code == 200
        processes = psutil.Process(launcher.pid).children(recursive=True)
        assert len(processes) >= 4  # gunicorn master, its two workers (2 cores) or more, Streamlit

        os.killpg(launcher.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the foreground process group
        assert launcher.wait(timeout=60) == 0, log_path.read_text()
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        for process in processes:  # the children live in their own groups: kill any one left explicitly
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
    output = log_path.read_text()
    assert output.count(f"API ready on http://127.0.0.1:{api_port} (model ") == 1, output
    assert "run_all: stopped" in output and "did not stop" not in output, output
    assert "Perhaps out of memory" not in output and "SIGKILL" not in output, output
    assert port_is_free(api_port) and port_is_free(page_port)
    assert not [p for p in processes if alive(p)]


def alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_install_time_export_means_a_start_only_checks_the_cached_graph(tiny_bundle_path, caplog):
    """(A damaged cached graph is exported again: tests/test_engines.py.)"""
    path = export_for_serving(tiny_bundle_path)  # into the session's cache (TOMATO_CACHE_DIR), as `make install` does
    assert path.is_file() and path.parent == default_cache_dir()
    caplog.clear()  # keep only what the start below logs
    with caplog.at_level(logging.INFO, logger="inference.engines"):
        bundle = load_bundle(tiny_bundle_path, device="cpu", backend="onnxruntime")
    assert bundle.engine.name == "onnxruntime"
    assert not [r for r in caplog.records if "exporting" in r.getMessage() or "ignoring" in r.getMessage()]
