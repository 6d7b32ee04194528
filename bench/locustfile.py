"""Overload ramp against our API with locust: where do 429s start, does latency stay bounded?

    .venv/bin/locust -f bench/locustfile.py --headless -u 200 -r 20 -t 60s --host http://127.0.0.1:PORT \
        --csv /tmp/overload/locust --csv-full-history

`python -m bench.overload` starts the server, runs exactly this headless and reports RSS before/after.
Each user POSTs the leaf as an `image/jpeg` body (one of the three shapes /predict accepts) with no think
time, so every user is one request in flight. A 429 is recorded as a failure named "HTTP 429" (locust's
failures CSV then counts them by status). Environment:
  BENCH_IMAGE              image to send (default: inference_image/Early_blight_1.jpg)
  BENCH_HONOR_RETRY_AFTER  1 = sleep for Retry-After after a 429, as a polite client would (default 0)
  BENCH_SAMPLES            write one CSV line per request (time, users, status, ms) here, for exact per-step stats
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from locust import FastHttpUser, constant, events, task

IMAGE = Path(os.environ.get("BENCH_IMAGE", Path(__file__).resolve().parent.parent / "inference_image" / "Early_blight_1.jpg"))
HONOR_RETRY_AFTER = os.environ.get("BENCH_HONOR_RETRY_AFTER", "0") == "1"
SAMPLES_PATH = os.environ.get("BENCH_SAMPLES")
DATA = IMAGE.read_bytes()
_samples: list[str] = []  # gevent runs users cooperatively in one thread: a plain list is safe


class LeafUser(FastHttpUser):
    wait_time = constant(0)
    connection_timeout = 10.0
    network_timeout = 30.0

    @task
    def predict(self) -> None:
        started = time.time()
        with self.client.post("/predict", data=DATA, headers={"Content-Type": "image/jpeg"}, name="/predict",
                              catch_response=True) as response:
            status = response.status_code
            if status == 200:
                response.success()
            else:
                response.failure(f"HTTP {status}")  # status 0 = connection error or client timeout
        if SAMPLES_PATH:
            _samples.append(f"{started:.3f},{self.environment.runner.user_count},{status},"
                            f"{(time.time() - started) * 1000:.1f}")
        if status == 429 and HONOR_RETRY_AFTER:
            time.sleep(float(response.headers.get("Retry-After", "1")))


@events.quitting.add_listener
def _write_samples(environment, **_kwargs) -> None:
    if SAMPLES_PATH:
        Path(SAMPLES_PATH).write_text("time,users,status,ms\n" + "\n".join(_samples) + "\n")
