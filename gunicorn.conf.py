"""gunicorn settings for the tomato-leaf API, the one place they are written.

`python flask_server.py` loads this file and applies its command-line options on top; a plain `gunicorn` started in
this folder reads it by itself (gunicorn's default config file), so `gunicorn --bind 0.0.0.0:8000 --workers 4` is the
same server: one process per core by default, each loading its model after the fork, whole-server /metrics and
/readyz across the workers (serving/workers.py), access logs, and in-flight requests finished on SIGTERM.
"""
import gc
import os

import serving  # first: it keeps Triton out of the server (serving/__init__.py)
from inference.bundle import resolve_device
from serving import http_errors, memory, swap
from serving import workers as _workers
from serving.auth import InvalidToken, token_from_environment

wsgi_app = "flask_server:create_app()"
bind = ["127.0.0.1:5000"]
worker_class = "gthread"
workers = _workers.default_worker_count(uses_cuda=resolve_device(os.environ.get("TOMATO_DEVICE")).type == "cuda")
# Above MAX_QUEUE + MAX_BATCH_SIZE: under overload, requests reach the batcher's bounded queue (a quick 429)
# instead of waiting unseen in gunicorn's own queue.
threads = 128
backlog = 256
timeout = 60
graceful_timeout = 20
accesslog = "-"
errorlog = "-"
loglevel = "info"
control_socket_disable = True  # several servers may run side by side
preload_app = False


def on_starting(arbiter) -> None:
    """Master, before any fork: refuse a TOMATO_API_TOKEN that would not protect anything (serving/auth.py) with
    one clear line instead of every worker failing to boot; then the shared run folder (serving/workers.py)."""
    try:
        token_from_environment()
    except InvalidToken as exc:
        raise SystemExit(f"refusing to start: {exc}") from None
    _workers.on_starting(arbiter)
    swap.install_master(arbiter)  # HUP: every worker swaps its model in place, no request fails (serving/swap.py)


# Memory a big request took goes back to the system (serving/memory.py); TOMATO_MEMORY_GUARD=off to compare.
MEMORY_GUARD = os.environ.get("TOMATO_MEMORY_GUARD", "on").lower() != "off"
_memory_guard = memory.MemoryGuard()


def pre_fork(arbiter, worker) -> None:
    """Master, before each fork: move every object imported so far (torch, torchvision, Flask: ~400 MiB of Python
    heap) out of the garbage collector's reach, as the `gc.freeze` documentation advises before a fork. Otherwise
    the worker's first full collection writes into each of those objects' headers and so copies every page they
    live on: 150 MiB less in all for two workers (BENCHMARKS.md, "Memory")."""
    gc.freeze()


def post_fork(arbiter, worker) -> None:
    """Each worker: gunicorn's own 400/414/431 answers (requests it cannot parse) in JSON, like every other error;
    bounded malloc arenas and a fixed mmap threshold."""
    http_errors.install()
    swap.ignore_until_ready(worker)
    if MEMORY_GUARD:
        memory.tune_malloc()


def post_worker_init(worker) -> None:
    """Each worker, app loaded: SIGHUP now swaps the model in place."""
    swap.install_worker(worker)


def pre_request(worker, req) -> None:
    """Before each request: the memory guard counts requests in flight (it trims when the worker falls idle)."""
    if MEMORY_GUARD:
        _memory_guard.before_request()


def post_request(worker, req, environ, resp) -> None:
    """After the answer is sent: trim malloc's free memory if this worker grew well above its level."""
    if MEMORY_GUARD:
        _memory_guard.after_request()


def child_exit(arbiter, worker) -> None:
    _workers.child_exit(arbiter, worker)
    if os.environ.get(_workers.RUN_DIR_ENV):
        swap.forget_worker(os.environ[_workers.RUN_DIR_ENV], worker.pid)


on_exit = _workers.on_exit
