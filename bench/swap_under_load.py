"""Model swaps under load: `python -m bench.swap_under_load [--swaps 5] [--clients 16] [--workers 2]`.

A real server (`flask_server.py`, N workers) on a copy of the shipped bundle; `--clients` threads post a leaf photo
to /predict without pause; meanwhile the bundle file is replaced by another version (the same weights, another
version string, so another sha256 and ONNX graph) and `python -m serving.reload` swaps it in, `--swaps` times, the
versions alternating (every second swap is a rollback), then one bad bundle (a wrong head) is refused. Reports
answers, non-200 answers, answers that name no version, and how long each swap took.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
import torch

from inference import DEFAULT_BUNDLE_PATH
from inference.export import export_for_serving

ROOT = Path(__file__).resolve().parent.parent


def variant(source: Path, target: Path, **changes) -> Path:
    raw = torch.load(source, map_location="cpu", weights_only=True)
    raw.update(changes)
    torch.save(raw, target)
    return target


def install(bundle: Path, served: Path) -> None:
    staged = served.with_name(f".{served.name}.new")
    staged.write_bytes(bundle.read_bytes())
    os.replace(staged, served)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_BUNDLE_PATH)
    parser.add_argument("--swaps", type=int, default=5)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--settle-s", type=float, default=3.0, help="load between swaps")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    from support import LiveServer

    work = Path(tempfile.mkdtemp(prefix="swap-bench-"))
    versions = {"a": variant(args.model, work / "a.pt", version="bench-a"),
                "b": variant(args.model, work / "b.pt", version="bench-b")}
    raw = torch.load(args.model, map_location="cpu", weights_only=True)
    raw["state_dict"] = {**raw["state_dict"], "classifier.weight": raw["state_dict"]["classifier.weight"][:-1]}
    torch.save(raw, work / "bad.pt")
    for path in versions.values():  # as `make reload` does
        export_for_serving(path)
    served = work / "current.pt"
    install(versions["a"], served)
    server = LiveServer(served, work, workers=args.workers, threads=64).wait_ready()
    photo = (ROOT / "inference_image" / "Late_blight_1.jpg").read_bytes()
    answers: list[tuple[int, str | None]] = []
    errors: list[str] = []
    stop = threading.Event()

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                answer = session.post(f"{server.url}/predict", files={"file": ("leaf.jpg", photo)}, timeout=60)
                version = answer.json().get("model", {}).get("version") if answer.ok else None
                answers.append((answer.status_code, version))
            except requests.RequestException as exc:
                errors.append(repr(exc))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    report = []
    try:
        for thread in threads:
            thread.start()
        time.sleep(args.settle_s)
        plan = [("b" if i % 2 == 0 else "a") for i in range(args.swaps)] + ["bad"]
        for name in plan:
            install(versions.get(name, work / "bad.pt"), served)
            started = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "serving.reload", "--url", server.url, "--pid",
                                     str(server.process.pid)], cwd=ROOT, capture_output=True, text=True, timeout=600)
            report.append((name, result.returncode, time.perf_counter() - started, result.stdout.strip()))
            time.sleep(args.settle_s)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        server.stop()
    bad = [a for a in answers if a[0] != 200]
    unnamed = [a for a in answers if a[0] == 200 and not a[1]]
    print(f"{len(answers)} answers from {args.clients} clients, {args.workers} workers: {len(bad)} non-200, "
          f"{len(unnamed)} without a version, {len(errors)} connection errors")
    for name, code, seconds, out in report:
        print(f"swap to {name}: exit {code} after {seconds:.1f} s: {out.splitlines()[-1] if out else ''}")
    return 0 if not bad and not unnamed and not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
