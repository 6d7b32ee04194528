"""Closed-loop HTTP load generator: N client threads, one keep-alive connection each, for a fixed time.

Each client sends the next request as soon as the previous one is answered (no think time), so the
concurrency level is exactly N requests in flight. Only requests that *finish* inside the measurement
window count; a short warm-up before it fills connection pools and the server's caches.
Bounded in time (warm-up + duration + one request timeout) and in count (`max_requests` per client).

The clients run on the same two cores as the server under test, so they are kept lean: urllib3 with one
connection per client, not `requests` (whose per-call session machinery cost about 2 ms of CPU per request
here, time a single-client latency would wrongly charge to the server). Every multipart request still gets
a fresh random boundary, as curl, requests and browsers send, so servers cannot profit from a repeated one.
"""
from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError, ProtocolError, TimeoutError as Urllib3Timeout

# Builds one request's (body, headers) from the image bytes; called once per request.
RequestBuilder = Callable[[bytes], tuple[bytes, dict[str, str]]]


def multipart_file(data: bytes) -> tuple[bytes, dict[str, str]]:
    """Our API and the baseline: multipart/form-data with a `file` part (what `curl -F file=@leaf.jpg` sends)."""
    body, content_type = urllib3.encode_multipart_formdata({"file": ("leaf.jpg", data, "image/jpeg")})
    return body, {"Content-Type": content_type}


def raw_body(data: bytes) -> tuple[bytes, dict[str, str]]:
    """TorchServe's documented form: the image as the raw request body (`curl -T leaf.jpg`)."""
    return data, {"Content-Type": "application/octet-stream"}


@dataclass
class LoadResult:
    system: str
    input: str
    clients: int
    duration_s: float
    ok: int  # 2xx responses finished inside the window
    errors: dict[str, int] = field(default_factory=dict)  # "429", "504", "timeout", "conn_error", ... -> count
    throughput: float = 0.0  # ok responses per second
    p50_ms: float | None = None  # latency percentiles of the ok responses
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    error_p99_ms: float | None = None  # p99 latency of the non-2xx answers (how fast overload is refused)
    completed: int = 0  # every request that finished, warm-up and tail included (CPU per answer: bench/cpu.py)
    note: str = ""
    rss_kib: int | None = None  # all the server's processes right after the point (bench/cpu.py), when measured
    pss_kib: int | None = None

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict:
        return asdict(self)


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), math.ceil(q / 100.0 * len(sorted_values))))
    return sorted_values[rank - 1]


def run_load(
    url: str,
    data: bytes,
    clients: int,
    duration_s: float,
    build: RequestBuilder = multipart_file,
    warmup_s: float = 1.0,
    timeout_s: float = 30.0,
    max_requests: int = 1_000_000,
    system: str = "",
    input_name: str = "",
) -> LoadResult:
    """Drive `clients` concurrent closed-loop clients against `url`; returns counts and latency percentiles."""
    if not url.startswith(("http://127.", "http://localhost")):
        raise ValueError(f"loopback targets only, got {url}")
    target = urlsplit(url)
    start_gate = threading.Barrier(clients + 1)
    lock = threading.Lock()
    ok_latencies: list[float] = []
    error_latencies: list[float] = []
    errors: Counter[str] = Counter()
    clock: dict[str, float] = {}
    completed: list[int] = []

    def client() -> None:
        connection = urllib3.HTTPConnectionPool(target.hostname, target.port, maxsize=1, block=True, retries=False,
                                                timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s))
        mine_ok: list[float] = []
        mine_err: list[float] = []
        mine_errors: Counter[str] = Counter()
        mine_completed = 0
        start_gate.wait()
        window_start, window_end = clock["start"], clock["end"]
        for _ in range(max_requests):
            body, headers = build(data)  # outside the timed span: encoding is the client's work, not the server's
            sent = time.perf_counter()
            if sent >= window_end:
                break
            try:
                status = str(connection.urlopen("POST", target.path, body=body, headers=headers).status)
            except Urllib3Timeout:
                status = "timeout"
            except (NewConnectionError, ProtocolError, ConnectionError):
                status = "conn_error"
                time.sleep(0.05)  # a refused connection returns at once: don't spin
            except HTTPError as exc:
                status = type(exc).__name__
            done = time.perf_counter()
            mine_completed += 1
            if not (window_start <= done <= window_end):
                continue  # warm-up, or finished after the window closed
            latency_ms = (done - sent) * 1000.0
            if status.startswith("2"):
                mine_ok.append(latency_ms)
            else:
                mine_errors[status] += 1
                mine_err.append(latency_ms)
        connection.close()
        with lock:
            ok_latencies.extend(mine_ok)
            error_latencies.extend(mine_err)
            errors.update(mine_errors)
            completed.append(mine_completed)

    threads = [threading.Thread(target=client, name=f"client-{i}", daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    now = time.perf_counter()
    clock["start"] = now + warmup_s
    clock["end"] = now + warmup_s + duration_s
    start_gate.wait()
    for thread in threads:
        thread.join(warmup_s + duration_s + timeout_s + 30.0)
    ok_latencies.sort()
    error_latencies.sort()
    return LoadResult(
        system=system,
        input=input_name,
        clients=clients,
        duration_s=duration_s,
        ok=len(ok_latencies),
        errors=dict(sorted(errors.items())),
        throughput=len(ok_latencies) / duration_s,
        p50_ms=percentile(ok_latencies, 50),
        p95_ms=percentile(ok_latencies, 95),
        p99_ms=percentile(ok_latencies, 99),
        max_ms=ok_latencies[-1] if ok_latencies else None,
        error_p99_ms=percentile(error_latencies, 99),
        completed=sum(completed),
    )
