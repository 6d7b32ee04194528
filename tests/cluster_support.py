"""Real job-queue processes for the tests: a private redis-server on a free port and model workers
(`python -m jobs.worker`) as subprocesses, each in its own process group so a test can kill -9 all of it."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from support import ROOT, free_port

REDIS_SERVER = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
# a worker that died holding a chunk gives it back within VISIBILITY + RESTORE seconds (jobs/celery_app.py)
VISIBILITY_TIMEOUT_S = 4
RESTORE_INTERVAL_S = 1
START_TIMEOUT_S = 300.0  # a worker loads and warms the model (and may export ONNX) on 2 loaded cores


def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    """Poll `condition()` until it returns something truthy; TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class RedisServer:
    """redis-server with an append-only file fsynced on every write: a restart keeps every queued job."""

    def __init__(self, folder: Path) -> None:
        assert REDIS_SERVER, "redis-server is not installed"
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                   "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--logfile", "redis.log"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for(answers, 30, f"redis-server on port {self.port}")

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, db=db, socket_connect_timeout=2)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: redis writes the append-only file and exits
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class JobWorker:
    """`python -m jobs.worker` on `redis_url`; `wait_ready` waits until its model process beats."""

    def __init__(self, model: Path, redis_url: str, log_dir: Path, name: str, extra_env: dict[str, str] | None = None):
        self.name = name
        self.log_path = log_dir / f"worker-{name}.log"
        env = {**os.environ, "TOMATO_JOBS_REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1",
               "TOMATO_JOBS_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
               "TOMATO_JOBS_RESTORE_INTERVAL_S": str(RESTORE_INTERVAL_S), **(extra_env or {})}
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen([sys.executable, "-m", "jobs.worker", "--model", str(model), "--name", name,
                                         "--loglevel", "info"], cwd=ROOT, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.client = redis.Redis.from_url(redis_url, socket_connect_timeout=2)

    def model_pids(self) -> set[int]:
        """pids of this worker's processes that hold a loaded model (their heartbeat keys)."""
        pids = set()
        for key in self.client.scan_iter(match="tomato:worker:*"):
            pid = int(key.decode().rsplit(":", 1)[1])
            if pid != self.process.pid and _in_group(pid, self.process.pid):
                pids.add(pid)
        return pids

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> "JobWorker":
        try:
            wait_for(lambda: self.process.poll() is not None or self.model_pids(), timeout, f"worker {self.name}")
        except TimeoutError:
            self.kill()
            raise
        if self.process.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited ({self.process.returncode}):\n{self.log()[-4000:]}")
        return self

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """kill -9 the whole worker: the Celery parent and its model process."""
        self.signal_group(signal.SIGKILL)
        self.process.wait()
        self._log.close()

    def stop(self, timeout: float = 20) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # warm shutdown
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.signal_group(signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait()
        if not self._log.closed:
            self._log.close()


def _in_group(pid: int, pgid: int) -> bool:
    try:
        return os.getpgid(pid) == pgid
    except ProcessLookupError:
        return False
