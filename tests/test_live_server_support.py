"""The test suite's own server handling, which a slow or failing start must not break.

* Waiting must survive a slow machine: a /readyz that takes longer than one probe's timeout while the workers load is
  "not ready yet", not a failure (the first `make test` on a busy 2-core machine broke on exactly that). A real HTTP
  server on a free port answers /readyz slowly for the first probes, then 503, then 200.
* A server that never gets ready, or whose master dies, leaves no process behind (a leaked gunicorn master with two
  workers held 1.8 GB for 14 minutes after pytest had exited).
"""
from __future__ import annotations

import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psutil
import pytest
from support import LiveServer, leftover_servers, wait_until_ready

import flask_test


class SlowStartHandler(BaseHTTPRequestHandler):
    """/readyz: two answers slower than the probe timeout, then one 503, then 200."""

    calls = 0

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        type(self).calls += 1
        if type(self).calls <= 2:
            time.sleep(1.0)  # longer than the 0.3 s probe timeout below: the client sees ReadTimeout
        status = 503 if type(self).calls == 3 else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def slow_server():
    SlowStartHandler.calls = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowStartHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_test_suite_wait_treats_read_timeouts_as_not_ready(slow_server):
    wait_until_ready(slow_server, deadline_s=60, probe_timeout_s=0.3)
    assert SlowStartHandler.calls >= 4  # two timed-out probes and a 503 were waited through


def test_smoke_script_wait_treats_read_timeouts_as_not_ready(slow_server):
    flask_test.wait_until_ready(slow_server, timeout=60, probe_timeout=0.3)
    assert SlowStartHandler.calls >= 4


def test_wait_gives_up_at_its_deadline_with_the_last_answer(slow_server):
    with pytest.raises(TimeoutError, match="ReadTimeout"):
        wait_until_ready(slow_server, deadline_s=0.5, probe_timeout_s=0.3)


def group_members(pgid: int) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["status"])
            if p.info["status"] != psutil.STATUS_ZOMBIE and _pgid(p) == pgid]


def _pgid(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except OSError:
        return None


def test_a_server_that_never_gets_ready_is_stopped_by_the_wait(tmp_path):
    server = LiveServer(tmp_path / "missing.pt", tmp_path)  # the model cannot load: /readyz stays 503
    with pytest.raises(RuntimeError, match="not ready after"):
        server.wait_ready(timeout=5)
    assert not server.running() and not group_members(server.process.pid)
    assert server not in leftover_servers()


def test_stop_reaches_workers_whose_master_was_killed(tiny_bundle_path, tmp_path):
    server = LiveServer(tiny_bundle_path, tmp_path, workers=2).wait_ready()
    try:
        workers = [p for p in group_members(server.process.pid) if p.pid != server.process.pid]
        assert len(workers) == 2, workers
        os.kill(server.process.pid, signal.SIGKILL)  # the master dies; its workers are orphaned
        server.process.wait()
    finally:
        server.stop()
    psutil.wait_procs(workers, timeout=30)
    assert not group_members(server.process.pid)
    assert server not in leftover_servers()
