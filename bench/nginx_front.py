"""Start nginx with the repository's deploy/nginx.conf in front of a server on a loopback port.

The shipped file is used as it is, except its two marked lines: where clients connect and where gunicorn listens
(both moved to the ports given). nginx runs in the foreground in its own process group, with a fresh prefix
folder for its pid, logs and temp files; `stop()` ends only that group.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
CLIENT_LISTEN = "listen 127.0.0.1:8080;"
UPSTREAM_SERVER = "server 127.0.0.1:5000;"


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None)


def render_config(listen_port: int, upstream_port: int) -> str:
    """deploy/nginx.conf with its two marked lines pointed at the given loopback ports."""
    text = NGINX_CONF.read_text()
    for old in (CLIENT_LISTEN, UPSTREAM_SERVER):
        if text.count(old) != 1:
            raise ValueError(f"{NGINX_CONF} must contain {old!r} exactly once")
    return (text.replace(CLIENT_LISTEN, f"listen 127.0.0.1:{listen_port};")
                .replace(UPSTREAM_SERVER, f"server 127.0.0.1:{upstream_port};"))


class NginxFront:
    def __init__(self, upstream_port: int, listen_port: int) -> None:
        binary = nginx_binary()
        if binary is None:
            raise FileNotFoundError("nginx is not installed (make proxy-deps, or apt-get install nginx-light)")
        self.port = listen_port
        self.url = f"http://127.0.0.1:{listen_port}"
        # Under /tmp and world-readable: when started as root, nginx's workers run as `nobody` and need the prefix.
        self.prefix = Path(tempfile.mkdtemp(prefix="tomato-nginx-", dir="/tmp"))
        self.prefix.chmod(0o755)
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(render_config(listen_port, upstream_port))
        self.log_path = self.prefix / "error.log"
        self.command = [binary, "-p", f"{self.prefix}/", "-c", str(self.conf), "-e", str(self.log_path),
                        "-g", "daemon off;"]
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> "NginxFront":
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"nginx did not listen on {self.port} within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)  # nginx: fast shutdown; start_new_session: our group only
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> "NginxFront":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
