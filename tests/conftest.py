"""Shared fixtures: a tiny random-weight bundle for fast API tests, the shipped bundle for correctness."""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A fresh ONNX cache per test run (inherited by the server processes the tests start): every run exercises the
# export path once, and nothing left in ~/.cache can make a test pass or fail.
os.environ["TOMATO_CACHE_DIR"] = tempfile.mkdtemp(prefix="tomato-test-onnx-cache-")
atexit.register(shutil.rmtree, os.environ["TOMATO_CACHE_DIR"], True)
# Feedback written by any app or server a test forgets to point elsewhere lands here, never in the project's feedback/.
os.environ["TOMATO_FEEDBACK_DIR"] = tempfile.mkdtemp(prefix="tomato-test-feedback-")
atexit.register(shutil.rmtree, os.environ["TOMATO_FEEDBACK_DIR"], True)
# No app or server reaches a Redis the tests did not start (e.g. `make cluster`'s on 6379): port 1 refuses at once,
# so job routes answer 503 unless a test points them at its private redis-server (tests/cluster_support.py).
os.environ["TOMATO_JOBS_REDIS_URL"] = "redis://127.0.0.1:1/0"


def _import_streamlit_library() -> None:
    """Import the streamlit package with the project root hidden, so our streamlit.py never shadows it."""
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    try:
        import streamlit  # noqa: F401  (cached in sys.modules for every later import)
    finally:
        sys.path[:] = saved


_import_streamlit_library()

import psutil  # noqa: E402
import pytest
import torch
from cluster_support import REDIS_SERVER, JobWorker, RedisServer
from support import CLASS_NAMES, SHIPPED_BUNDLE, LiveServer, leftover_servers, sample_files

from model.bundle import save_bundle
from model.data import DISPLAY_NAMES
from model.network import NetworkConfig, build_network
from model.transforms import PreprocessConfig
from model.verdict import VerdictRule


@pytest.fixture(scope="session")
def tiny_bundle_path(tmp_path_factory) -> Path:
    """Random-weight Lite0 at 64 px: same code paths as the real model, milliseconds per forward."""
    torch.manual_seed(0)
    network = build_network(NetworkConfig(num_classes=len(CLASS_NAMES))).eval()
    path = tmp_path_factory.mktemp("bundle") / "tiny.pt"
    # A random network cannot tell a leaf from anything else: its rule diagnoses every image, so the API's and the
    # page's mechanics can be tested on it. The verdicts themselves are tested on the shipped model.
    diagnose_all = VerdictRule(leaf_source="top_probability", leaf_reject=0.0, leaf_accept=0.0, min_probability=0.0)
    save_bundle(path, network, CLASS_NAMES, [DISPLAY_NAMES[c] for c in CLASS_NAMES],
                PreprocessConfig(image_size=64, resize_size=64), temperature=1.5, name="tiny-test-model",
                verdict_rule=diagnose_all.to_dict())
    return path


@pytest.fixture(scope="session")
def legacy_tiny_bundle_path(tmp_path_factory) -> Path:
    """The tiny network saved as a 1.x bundle (no leaf head, no verdict rule): served with the default rule."""
    torch.manual_seed(0)
    network = build_network(NetworkConfig(num_classes=len(CLASS_NAMES))).eval()
    path = tmp_path_factory.mktemp("legacy-bundle") / "tiny-1x.pt"
    save_bundle(path, network, CLASS_NAMES, [DISPLAY_NAMES[c] for c in CLASS_NAMES],
                PreprocessConfig(image_size=64, resize_size=64), temperature=1.5, name="tiny-test-model")
    return path


@pytest.fixture(scope="session")
def shipped_bundle_path() -> Path:
    assert SHIPPED_BUNDLE.is_file(), f"the shipped model {SHIPPED_BUNDLE} is missing"
    return SHIPPED_BUNDLE


@pytest.fixture(scope="session")
def shipped_bundle(shipped_bundle_path):
    from inference import load_bundle

    return load_bundle(shipped_bundle_path, device="cpu")


@pytest.fixture(scope="session")
def leaf_bytes() -> bytes:
    return sample_files()[0].read_bytes()


@pytest.fixture
def make_app(tiny_bundle_path, tmp_path):
    """Build an app on the tiny model with per-test overrides."""
    from flask_server import create_app

    def factory(**overrides):
        config = {"MODEL_PATH": str(tiny_bundle_path), "FEEDBACK_DIR": str(tmp_path / "feedback"), "TESTING": True,
                  "TORCH_THREADS": 1, **overrides}
        return create_app(config)

    return factory


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def start_server(tmp_path):
    """Factory fixture: `start_server(model_path, extra_env={...})` -> ready LiveServer, stopped after the test."""
    servers: list[LiveServer] = []

    def factory(model: Path, extra_env: dict[str, str] | None = None, threads: int = 32,
                workers: int = 0, launcher: str = "flask_server") -> LiveServer:
        server = LiveServer(model, tmp_path, extra_env, threads, workers, launcher)
        servers.append(server)
        return server.wait_ready()

    try:
        yield factory
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="session")
def shipped_server(shipped_bundle_path, tmp_path_factory):
    """One real server on the shipped model, shared by the tests that only read from it."""
    server = LiveServer(shipped_bundle_path, tmp_path_factory.mktemp("shipped-server"))
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A private redis-server on a free port for the whole session (append-only file: restarts keep the data)."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (`make redis` installs Debian's): the job-queue tests need it")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def job_workers(redis_server, shipped_bundle, shipped_bundle_path, tmp_path_factory) -> list[JobWorker]:
    """Two real model workers on the shipped bundle, consuming the default queue of Redis db 0. A test that kills
    one puts a fresh one in its place in this list; whatever the list holds is stopped at the end.

    `shipped_bundle` (loaded here with every core) has put the ONNX graph in the session's cache: a worker exports
    it with its one forward thread otherwise, which takes minutes on a busy machine."""
    folder = tmp_path_factory.mktemp("workers")
    workers: list[JobWorker] = []
    try:
        workers += [JobWorker(shipped_bundle_path, redis_server.url(), folder, f"w{i}") for i in range(2)]
        for worker in workers:
            worker.wait_ready()
        yield workers
    finally:
        for worker in workers:
            worker.stop()


@pytest.fixture(scope="session")
def cluster_api(job_workers, redis_server, shipped_bundle_path, tmp_path_factory) -> LiveServer:
    """A real API server (shipped model) whose job routes use the session's Redis and workers."""
    server = LiveServer(shipped_bundle_path, tmp_path_factory.mktemp("cluster-api"), workers=1,
                        extra_env={"TOMATO_JOBS_REDIS_URL": redis_server.url(), "TOMATO_JOBS_CHUNK_SIZE": "8"})
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def pytest_sessionfinish(session, exitstatus) -> None:
    """Fail the run if any server or other child process outlived its test: stop it, name it, exit non-zero.

    A leaked gunicorn master with two workers holds ~1.8 GB and a port long after pytest has gone."""
    leaked = [f"server {server.url} (pid {server.process.pid})" for server in leftover_servers()]
    for server in leftover_servers():
        server.stop(timeout=5)
    for child in psutil.Process().children(recursive=True):
        try:
            if any("multiprocessing." in part for part in child.cmdline()):  # Python's own helpers live to exit
                continue
            leaked.append(f"process {child.pid}: {' '.join(child.cmdline())[:200]}")
            child.kill()
        except psutil.Error:  # exited meanwhile
            pass
    if leaked:
        session.config.get_terminal_writer().line(
            "LEAKED PROCESSES (stopped now; a test or fixture did not stop what it started):\n  "
            + "\n  ".join(leaked), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
