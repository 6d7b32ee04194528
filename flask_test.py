"""Smoke test of a RUNNING server over real HTTP: `python flask_test.py [--url http://127.0.0.1:5000]`.

Posts every sample in inference_image/ (named <class>_<n>.jpg), checks status, response schema and
that each prediction is "diagnosed" with the file's class; posts the photos in inference_image/not_a_leaf/
and checks each comes back "not_tomato_leaf"; sends one bad input, prints a table, and exits non-zero
on any failure.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import requests

SAMPLES = Path(__file__).resolve().parent / "inference_image"
NOT_LEAF_SAMPLES = SAMPLES / "not_a_leaf"
PREDICTION_KEYS = {"class_name", "display_name", "probability", "top_k", "probabilities", "verdict", "leaf_score",
                   "timing_ms"}
NOT_A_LEAF = "not_tomato_leaf"


def expected_class(path: Path) -> str:
    """What the answer must say: the class in the file name, or not_tomato_leaf for the non-leaf photos."""
    return NOT_A_LEAF if path.parent == NOT_LEAF_SAMPLES else path.stem.rsplit("_", 1)[0]


def wait_until_ready(url: str, timeout: float, probe_timeout: float = 10.0,
                     alive: Callable[[], bool] = lambda: True) -> None:
    """Poll /readyz until 200. A refused connection, a reset or a slow answer while the workers load all mean
    "not yet" (a loaded machine can take seconds to answer); only the overall deadline (TimeoutError) or `alive()`
    turning False (RuntimeError: the server process exited) ends the wait. The test suite waits with this too."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the server at {url} exited before it was ready")
        try:
            response = requests.get(f"{url}/readyz", timeout=min(probe_timeout, max(0.1, deadline - time.monotonic())))
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.3)
    raise TimeoutError(f"{url} is not ready after {timeout:.0f} s (last answer: {last})")


def check_sample(session: requests.Session, url: str, path: Path) -> tuple[bool, str, str, float, float]:
    """Returns (ok, expected, predicted, probability, latency ms)."""
    started = time.perf_counter()
    with open(path, "rb") as fh:
        response = session.post(f"{url}/predict", files={"file": (path.name, fh, "image/jpeg")}, timeout=30)
    latency = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        return False, expected_class(path), f"HTTP {response.status_code}", 0.0, latency
    body = response.json()
    prediction = body["predictions"][0]
    schema_ok = PREDICTION_KEYS <= set(prediction) and {"name", "sha256"} <= set(body["model"])
    if expected_class(path) == NOT_A_LEAF:
        ok = schema_ok and prediction["verdict"] == NOT_A_LEAF
        return ok, NOT_A_LEAF, prediction["verdict"], prediction["leaf_score"], latency
    ok = schema_ok and prediction["verdict"] == "diagnosed" and prediction["class_name"] == expected_class(path)
    shown = prediction["class_name"] if prediction["verdict"] == "diagnosed" else prediction["verdict"]
    return ok, expected_class(path), shown, prediction["probability"], latency


def check_bad_input(session: requests.Session, url: str) -> bool:
    response = session.post(f"{url}/predict", files={"file": ("notes.txt", b"not an image", "text/plain")}, timeout=30)
    error = response.json().get("error", {}) if response.headers.get("Content-Type", "").startswith("application/json") else {}
    return response.status_code == 415 and error.get("code") == "not_an_image"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:5000", help="base URL of the running server")
    parser.add_argument("--wait", type=float, default=300, help="seconds to wait for /readyz")
    args = parser.parse_args(argv)
    url = args.url.rstrip("/")
    try:
        wait_until_ready(url, args.wait)
    except TimeoutError as exc:
        raise SystemExit(f"FAIL: {exc} (is `python flask_server.py` running?)") from None
    session = requests.Session()
    failures = 0
    print(f"{'file':34} {'expected':24} {'predicted':24} {'prob':>6} {'ms':>7}  result  (prob: leaf score for non-leaves)")
    for path in [*sorted(SAMPLES.glob("*.jpg")), *sorted(NOT_LEAF_SAMPLES.glob("*.jpg"))]:
        ok, expected, predicted, probability, latency = check_sample(session, url, path)
        failures += not ok
        print(f"{path.name:34} {expected:24} {predicted:24} {probability:6.3f} {latency:7.1f}  {'ok' if ok else 'FAIL'}")
    bad_ok = check_bad_input(session, url)
    failures += not bad_ok
    print(f"{'bad input (text file)':34} {'415 not_an_image':24} {'':24} {'':6} {'':7}  {'ok' if bad_ok else 'FAIL'}")
    print(f"{'PASS' if failures == 0 else 'FAIL'}: {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
