"""The real thing: `python flask_server.py` (gunicorn), or a plain `gunicorn`, on a free port, over real HTTP."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from serving.workers import RUN_DIR_PREFIX
from support import NOT_LEAF_SAMPLES, ROOT, class_of, free_port, sample_files


def post_file(url: str, path, timeout: float = 60) -> requests.Response:
    with open(path, "rb") as fh:
        return requests.post(f"{url}/predict", files={"file": (path.name, fh, "image/jpeg")}, timeout=timeout)


def batch_histogram(url: str) -> tuple[float, float]:
    """(number of forwards that held exactly one image, number of forwards) from /metrics."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    singles = float(re.search(r'tomato_batch_size_bucket\{le="1.0"\} (\S+)', text).group(1))
    total = float(re.search(r"tomato_batch_size_count (\S+)", text).group(1))
    return singles, total


def test_flask_test_script_passes_against_a_real_server(shipped_server):
    result = subprocess.run([sys.executable, str(ROOT / "flask_test.py"), "--url", shipped_server.url],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS: 0 failure(s)" in result.stdout
    # every leaf diagnosed right, every non-leaf photo called not_tomato_leaf, the bad file refused
    assert result.stdout.count(" ok") == len(sample_files()) + len(NOT_LEAF_SAMPLES) + 1


def test_32_concurrent_requests_are_answered_correctly_and_batched(shipped_server):
    paths = (sample_files() * 2)[:32]
    singles_before, total_before = batch_histogram(shipped_server.url)
    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda p: post_file(shipped_server.url, p), paths))
    assert [r.status_code for r in responses] == [200] * 32
    predicted = [r.json()["predictions"][0]["class_name"] for r in responses]
    assert predicted == [class_of(p) for p in paths]
    singles, total = batch_histogram(shipped_server.url)
    forwards, single_forwards = total - total_before, singles - singles_before
    assert forwards < 32, f"{forwards} forwards for 32 concurrent images: nothing was batched"
    assert single_forwards < forwards, "every forward held a single image"
    assert max(r.json()["predictions"][0]["batch_size"] for r in responses) > 1


@pytest.mark.parametrize("launcher", ["flask_server", "gunicorn"])
def test_two_worker_processes_answer_as_one_server(shipped_bundle_path, start_server, launcher):
    """Also started as a plain `gunicorn --workers 2`: gunicorn.conf.py gives it the same whole-server answers."""
    server = start_server(shipped_bundle_path, workers=2, launcher=launcher)
    assert requests.get(f"{server.url}/readyz", timeout=10).json()["workers"] == 2  # both models warm
    run_dirs = list(Path(tempfile.gettempdir()).glob(f"{RUN_DIR_PREFIX}{server.process.pid}-*"))
    assert len(run_dirs) == 1, run_dirs
    paths = (sample_files() * 2)[:24]
    with ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(lambda p: post_file(server.url, p), paths))
    assert [r.json()["predictions"][0]["class_name"] for r in responses] == [class_of(p) for p in paths]
    # every scrape, whichever process answers it (a new connection each), counts both processes' requests
    for _ in range(4):
        text = requests.get(f"{server.url}/metrics", timeout=10).text
        assert 'tomato_http_requests_total{endpoint="/predict",method="POST",status="200"} 24.0' in text, text
        assert float(re.search(r"^tomato_images_classified_total (\S+)", text, re.M).group(1)) == 24
    assert "POST /predict" in server.log()  # access log
    assert server.stop() == 0
    assert not run_dirs[0].exists()  # the shared metrics folder goes with the server


def test_overload_gives_429_then_recovers(shipped_bundle_path, start_server):
    server = start_server(shipped_bundle_path, {"TOMATO_MAX_QUEUE": "2", "TOMATO_MAX_BATCH_SIZE": "1",
                                                "TOMATO_TORCH_THREADS": "1"}, threads=64)
    paths = (sample_files() * 3)[:60]
    with ThreadPoolExecutor(60) as pool:
        responses = list(pool.map(lambda p: post_file(server.url, p), paths))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) > 0 and statuses.count(200) > 0
    rejected = next(r for r in responses if r.status_code == 429)
    assert rejected.headers["Retry-After"] == "1" and rejected.json()["error"]["code"] == "overloaded"
    assert all(r.json()["predictions"][0]["class_name"] == class_of(p)
               for p, r in zip(paths, responses) if r.status_code == 200)
    after = post_file(server.url, sample_files()[0])
    assert after.status_code == 200 and after.json()["predictions"][0]["class_name"] == class_of(sample_files()[0])


def test_sigterm_lets_in_flight_requests_finish(tiny_bundle_path, start_server):
    # The batcher waits 1.5 s for company, so these requests are surely in flight when SIGTERM arrives.
    server = start_server(tiny_bundle_path, {"TOMATO_BATCH_WAIT_MS": "1500", "TOMATO_MAX_BATCH_SIZE": "64"})
    results: list[int] = []

    def client(path) -> None:
        results.append(post_file(server.url, path, timeout=30).status_code)

    threads = [threading.Thread(target=client, args=(p,)) for p in sample_files()[:6]]
    for t in threads:
        t.start()
    time.sleep(0.5)
    exit_code = server.stop(timeout=30)
    for t in threads:
        t.join(30)
    assert results == [200] * 6, results
    assert exit_code == 0, server.log()
    assert "Handling signal: term" in server.log()


def test_plain_gunicorn_refuses_preload(tiny_bundle_path, tmp_path):
    """--preload would load the model in the master and fork its batcher away: stop with a reason instead."""
    env = {**os.environ, "TOMATO_MODEL_PATH": str(tiny_bundle_path), "TOMATO_FEEDBACK_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "gunicorn", "--preload", "--bind", f"127.0.0.1:{free_port()}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "--preload is not supported" in result.stdout + result.stderr
