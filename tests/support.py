"""Helpers shared by the tests (conftest.py holds only fixtures; test modules import from here)."""
from __future__ import annotations

import io
import os
import signal
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

from PIL import Image

import flask_test
from model.data import DISPLAY_NAMES

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "inference_image"
SHIPPED_BUNDLE = ROOT / "trained_model" / "tomato_leaf_lite0.pt"
DATA_ROOT = ROOT.parent / "shared" / "data" / "plantvillage_tomato"
CLASS_NAMES = sorted(DISPLAY_NAMES)


NOT_LEAF_SAMPLES = sorted((SAMPLES / "not_a_leaf").glob("*.jpg"))  # everyday photos: answered "not_tomato_leaf"


def sample_files() -> list[Path]:
    return sorted(SAMPLES.glob("*.jpg"))


def class_of(path: Path) -> str:
    """Sample files are named <class>_<n>.jpg."""
    return path.stem.rsplit("_", 1)[0]


def png_header_bomb(width: int = 40_000, height: int = 40_000) -> bytes:
    """A tiny PNG whose header claims an enormous size (Pillow reads the header before any pixel)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def encode(img: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


READY_TIMEOUT_S = 300.0  # overall deadline for a server to answer /readyz 200: CI machines are 2 loaded cores
PROBE_TIMEOUT_S = 10.0  # one /readyz probe; a slow answer while workers load is normal, not a failure

_started_servers: set["LiveServer"] = set()  # strong references: a forgotten server is still found


def wait_until_ready(url: str, deadline_s: float = READY_TIMEOUT_S, alive=lambda: True,
                     probe_timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """flask_test.py's wait with the suite's deadlines: any request failure means "not yet"; only the overall
    deadline (TimeoutError) or `alive()` turning False (RuntimeError) ends it."""
    flask_test.wait_until_ready(url, deadline_s, probe_timeout_s, alive)


class LiveServer:
    """A real server process on a free loopback port: `python flask_server.py` (launcher "flask_server"), or a plain
    `gunicorn` started in the project folder, which reads gunicorn.conf.py by itself (launcher "gunicorn").

    The server runs in its own process group, so `stop()` reaches the master and every worker even when the master
    is gone; every instance is remembered until stopped, so the session can fail if one is left running
    (conftest.py's pytest_sessionfinish)."""

    def __init__(self, model: Path, tmp: Path, extra_env: dict[str, str] | None = None, threads: int = 32,
                 workers: int = 0, launcher: str = "flask_server") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"server-{self.port}.log"
        env = {**os.environ, "TOMATO_FEEDBACK_DIR": str(tmp / "feedback"), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        if launcher == "flask_server":
            command = [sys.executable, str(ROOT / "flask_server.py"), "--port", str(self.port), "--model", str(model),
                       "--threads", str(threads), "--workers", str(workers)]
        elif launcher == "gunicorn":
            env["TOMATO_MODEL_PATH"] = str(model)
            command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}", "--threads", str(threads)]
            command += ["--workers", str(workers)] if workers else []
        else:
            raise ValueError(f"unknown launcher {launcher!r}")
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # its own process group: see stop()
        _started_servers.add(self)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> "LiveServer":
        """Ready, or stopped and an error with the server's log: a failed start never leaves processes behind."""
        try:
            wait_until_ready(self.url, timeout, alive=lambda: self.process.poll() is None)
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"{exc}; server log:\n{self.log()[-6000:]}") from None
        return self

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def running(self) -> bool:
        """True while any process of this server's group (master or a worker) is alive."""
        return self.process.poll() is None or _group_has_live_members(self.process.pid)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the master (in-flight requests finish), then SIGKILL the whole group if anything is left."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # workers orphaned by a dead master, or a master that hung
        except (ProcessLookupError, PermissionError):
            pass
        if self.process.poll() is None:
            self.process.wait()
        if not self._log.closed:
            self._log.close()
        _started_servers.discard(self)
        return self.process.returncode


def _group_has_live_members(pgid: int) -> bool:
    """Any non-zombie process in group `pgid` (Linux /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def leftover_servers() -> list[LiveServer]:
    """Servers started by this test session and still running: each one is a leak."""
    return [server for server in list(_started_servers) if server.running()]
