"""What an explanation costs: `python -m bench.explain_cost [--requests 200] [--rounds 6]`.

Two measurements, each in alternating turns so a busy machine slows every variant alike:
1. the forward alone (ONNX Runtime, batch 1, 1 thread): the graph as exported before explanations (logits only),
   the new graph with its feature-map output asking for the logits only (a request without ?explain), and the new
   graph asking for both (with ?explain);
2. a real server (`flask_server.py --workers 1`): server CPU (the whole process tree, from /proc) per answered
   /predict of one leaf photo, without and with `?explain=true` (map, overlay PNG and base64 included).
Prints a Markdown table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
import torch

from bench.cpu import session_cpu_s
from inference import DEFAULT_BUNDLE_PATH, decode_image, load_bundle, preprocess
from inference.engines import export_onnx, ort_session

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "inference_image" / "Late_blight_1.jpg"


def export_logits_only(network: torch.nn.Module, path: Path, image_size: int) -> Path:
    """The graph as it was exported before explanations: one output."""
    import copy

    network = copy.deepcopy(network).to("cpu", memory_format=torch.contiguous_format).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(network, (torch.zeros(2, 3, image_size, image_size),), None, input_names=["images"],
                                output_names=["logits"], dynamic_shapes=({0: batch},), dynamo=True, optimize=True,
                                verbose=False)
    program.save(str(path))
    return path


def forward_turns(model: Path, rounds: int, runs: int) -> dict[str, float]:
    """Median CPU microseconds (this process: the session runs on one thread) per batch-1 forward for each
    variant, timed in turns; CPU time, not wall time, so that other jobs on a busy host do not count."""
    bundle = load_bundle(model, device="cpu", warmup=False, backend="eager")
    side = bundle.preprocess.image_size
    work = Path(tempfile.mkdtemp())
    before = ort_session(export_logits_only(bundle.network, work / "before.onnx", side), threads=1)
    after = ort_session(export_onnx(bundle.network, work / "after.onnx", side), threads=1)
    image = preprocess(bundle, decode_image(PHOTO.read_bytes()))[None].numpy()
    variants = {
        "graph before explanations, logits": lambda: before.run(["logits"], {"images": image}),
        "graph with feature map, logits only (no explain)": lambda: after.run(["logits"], {"images": image}),
        "graph with feature map, logits + map (explain)": lambda: after.run(["logits", "features"], {"images": image}),
    }
    for fn in variants.values():
        for _ in range(20):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            started = time.process_time()
            for _ in range(runs):
                fn()
            samples[name].append((time.process_time() - started) / runs * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def server_turns(model: Path, rounds: int, requests_per_turn: int) -> dict[str, float]:
    """Median server CPU milliseconds per answer, plain and explained, in turns against one live server."""
    sys.path.insert(0, str(ROOT / "tests"))
    from support import LiveServer  # the suite's server launcher: free port, own session, stopped for sure

    server = LiveServer(model, Path(tempfile.mkdtemp()), workers=1, threads=16).wait_ready()
    photo = PHOTO.read_bytes()
    session = requests.Session()
    samples: dict[str, list[float]] = {"plain": [], "explain": []}
    try:
        for url in (f"{server.url}/predict", f"{server.url}/predict?explain=true"):
            for _ in range(20):
                session.post(url, files={"file": ("leaf.jpg", photo)}, timeout=60).raise_for_status()
        for _ in range(rounds):
            for mode, url in (("plain", f"{server.url}/predict"), ("explain", f"{server.url}/predict?explain=true")):
                before = session_cpu_s(server.process.pid)
                for _ in range(requests_per_turn):
                    answer = session.post(url, files={"file": ("leaf.jpg", photo)}, timeout=60)
                    answer.raise_for_status()
                    assert ("explanation" in answer.json()["predictions"][0]) == (mode == "explain")
                samples[mode].append((session_cpu_s(server.process.pid) - before) / requests_per_turn * 1000)
    finally:
        server.stop()
    return {mode: statistics.median(values) for mode, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_BUNDLE_PATH)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--runs", type=int, default=300, help="forwards per variant per round")
    parser.add_argument("--requests", type=int, default=200, help="requests per mode per round")
    args = parser.parse_args(argv)
    forward = forward_turns(args.model, args.rounds, args.runs)
    base = forward["graph before explanations, logits"]
    print("| forward, batch 1, ONNX Runtime 1 thread | CPU µs (median of turns) | vs before |\n| --- | --- | --- |")
    for name, value in forward.items():
        print(f"| {name} | {value:.0f} | {100 * (value / base - 1):+.1f} % |")
    server = server_turns(args.model, args.rounds, args.requests)
    print("\n| POST /predict, one photo, 1 worker | server CPU ms per answer (median of turns) | vs plain |\n"
          "| --- | --- | --- |")
    for mode, value in server.items():
        print(f"| {mode} | {value:.2f} | {100 * (value / server['plain'] - 1):+.1f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
