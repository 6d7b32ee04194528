"""Helpers shared by the tests (conftest.py holds only fixtures; test modules import from here)."""
from __future__ import annotations

import io
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import requests
from PIL import Image

from model.data import DISPLAY_NAMES

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "inference_image"
SHIPPED_BUNDLE = ROOT / "trained_model" / "tomato_leaf_lite0.pt"
DATA_ROOT = ROOT.parent / "shared" / "data" / "plantvillage_tomato"
CLASS_NAMES = sorted(DISPLAY_NAMES)


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


class LiveServer:
    """A real server process on a free loopback port: `python flask_server.py` (launcher "flask_server"), or a plain
    `gunicorn` started in the project folder, which reads gunicorn.conf.py by itself (launcher "gunicorn")."""

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
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> "LiveServer":
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except (requests.ConnectionError, requests.Timeout):  # a loaded machine can stall a probe past 2 s
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except Exception:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode
