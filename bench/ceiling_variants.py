"""The in-process ceiling, and what moves it: decode + preprocess + one batched forward + postprocess, no HTTP.

    python -m bench.ceiling_variants --model trained_model/tomato_leaf_lite0.pt --duration 8 --json out.json

Variants (each runs in its own fresh Python process, so thread settings and compiled code never leak):
  served           what the server does: load_bundle's default engine (ONNX Runtime on the CPU, intra-op threads =
                   cores, no spinning), JPEG draft on. This is the ceiling bench.run compares the servers with.
  eager            eager PyTorch, channels_last, torch threads = cores (the reference; the server before ONNX Runtime)
  contiguous       eager without channels_last
  threads-1        eager with torch.set_num_threads(1)
  torchscript      torch.jit.trace + torch.jit.freeze (what TorchServe runs)
  compile          torch.compile (inductor, static shapes; compile time reported separately)
  onnxruntime-spin ONNX Runtime with its intra-op threads spinning while idle (ONNX Runtime's own default)
  onnxruntime-t1   ONNX Runtime with one intra-op thread
  no-draft         served, but JPEGs decoded at full size (decode_image(draft_side=None))
Each variant reports images/s for every batch size and the time per image of each stage.

`processes=P` (run_variants; bench.run uses it for the headline ceiling) runs P copies of a variant at once, each
with cores / P threads, started together after every copy has loaded and warmed up, and sums their images/s: the
same work in the same process layout as `python flask_server.py` (one worker per core by default).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("served", "eager", "contiguous", "threads-1", "torchscript", "compile", "onnxruntime-spin",
            "onnxruntime-t1", "no-draft")
SERVED_PATH = ("served", "no-draft")  # variants that run load_bundle's default engine
DEFAULT_VARIANTS = VARIANTS


def torchscript_engine(network, image_size: int):
    """Traced + frozen TorchScript (conv-BN folded), the way TorchServe runs the model."""
    import torch

    from inference.engines import EagerEngine

    example = torch.zeros(1, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        return EagerEngine(torch.jit.freeze(torch.jit.trace(network.eval(), example)), name="torchscript")


def variant_engine(variant: str, bundle, work: Path, cores: int, info: dict):
    """The forward engine a variant measures (logits out), built from the bundle's eager network."""
    import torch

    from inference.engines import EagerEngine, OnnxRuntimeEngine, export_onnx, ort_session

    network, side = bundle.network, bundle.preprocess.image_size
    if variant in (*SERVED_PATH, "eager", "threads-1"):
        return bundle.engine  # what load_bundle built: the served engine, or eager
    if variant == "contiguous":
        return EagerEngine(network.to(memory_format=torch.contiguous_format), "eager-contiguous",
                           torch.contiguous_format)
    if variant == "torchscript":
        return torchscript_engine(network, side)
    if variant == "compile":
        return EagerEngine(torch.compile(network, dynamic=False), name="compile")
    if variant.startswith("onnxruntime"):
        started = time.perf_counter()
        path = export_onnx(network, work / "model.onnx", side)
        info["onnx_export_s"] = round(time.perf_counter() - started, 1)
        info["ort_threads"] = 1 if variant.endswith("-t1") else cores
        return OnnxRuntimeEngine(ort_session(path, info["ort_threads"], spin=variant.endswith("-spin")))
    raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")


def build_forward(variant: str, bundle, work: Path, batch_sizes: list[int], threads: int = 0) -> tuple[Callable, dict]:
    """Return forward(batch tensor) -> Scores through the variant's engine (predict's own forward, so
    softmax, calibration and the verdict's inputs are the server's), and facts about the setup (threads, compile time...)."""
    import torch

    from inference.predict import forward

    cores = threads or os.cpu_count() or 1
    threads = 1 if variant == "threads-1" else cores
    torch.set_num_threads(threads)
    info: dict = {"torch_threads": threads}
    started = time.perf_counter()
    bundle.engine = variant_engine(variant, bundle, work, cores, info)
    info["engine"] = bundle.engine.name
    side = bundle.preprocess.image_size
    for size in batch_sizes:  # warm-up, and for `compile` the compilation of each static shape
        forward(bundle, torch.zeros(size, 3, side, side))
        forward(bundle, torch.zeros(size, 3, side, side))
    info["setup_s"] = round(time.perf_counter() - started, 1)
    return lambda batch: forward(bundle, batch), info


def wait_for_start(barrier: Path | None, index: int, timeout_s: float = 600) -> None:
    """With a barrier folder: say this copy is ready, then wait until the parent says go (all copies ready)."""
    if barrier is None:
        return
    (barrier / f"ready-{index}").touch()
    deadline = time.monotonic() + timeout_s
    while not (barrier / "go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the other copies never got ready")
        time.sleep(0.01)


def measure_one(variant: str, model: Path, inputs: dict[str, Path], batch_sizes: list[int], duration_s: float,
                work: Path, threads: int = 0, barrier: Path | None = None, index: int = 0) -> list[dict]:
    """Run inside a fresh process: every (input, batch size) for `duration_s` each."""
    import torch

    from inference import decode_image, load_bundle
    from inference.predict import postprocess, preprocess

    torch.set_num_threads(1 if variant == "threads-1" else threads or os.cpu_count() or 1)
    backend = "auto" if variant in SERVED_PATH else "eager"
    bundle = load_bundle(model, device="cpu", warmup=True, backend=backend)
    fn, info = build_forward(variant, bundle, work, batch_sizes, threads)
    wait_for_start(barrier, index)
    draft = None if variant == "no-draft" else 320
    draft_kw = {"draft_side": None} if draft is None else {}
    rows = []
    for name, path in inputs.items():
        data = path.read_bytes()
        for size in batch_sizes:
            stage = {"decode": 0.0, "preprocess": 0.0, "forward": 0.0, "postprocess": 0.0}
            images = iterations = 0
            deadline = time.perf_counter() + duration_s
            first = time.perf_counter()
            while time.perf_counter() < deadline and iterations < 100_000:
                t0 = time.perf_counter()
                decoded = [decode_image(data, **draft_kw) for _ in range(size)]
                t1 = time.perf_counter()
                batch = torch.stack([preprocess(bundle, img) for img in decoded])
                t2 = time.perf_counter()
                scores = fn(batch)
                t3 = time.perf_counter()
                postprocess(bundle, scores, 3)
                t4 = time.perf_counter()
                for key, value in zip(stage, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    stage[key] += value
                images += size
                iterations += 1
            elapsed = time.perf_counter() - first
            rows.append({
                "variant": variant, "input": name, "batch": size, "images": images,
                "images_per_s": images / elapsed,
                **{f"{k}_ms_per_image": 1000 * v / max(images, 1) for k, v in stage.items()},
                **info,
            })
    return rows


def merge_copies(copies: list[list[dict]]) -> list[dict]:
    """One row per (input, batch) from P concurrent copies: images and images/s add up, stage times average."""
    merged = []
    for rows in zip(*copies):
        first = dict(rows[0])
        first["images"] = sum(r["images"] for r in rows)
        first["images_per_s"] = sum(r["images_per_s"] for r in rows)
        for key in (k for k in first if k.endswith("_ms_per_image")):
            first[key] = sum(r[key] for r in rows) / len(rows)
        first["processes"] = len(rows)
        merged.append(first)
    return merged


def run_copies(variant: str, model: Path, inputs: dict[str, Path], batch_sizes: list[int], duration_s: float,
               work: Path, processes: int, nice: int, timeout_s: float) -> list[dict]:
    """`processes` copies of one variant, measured at the same time (see the module docstring)."""
    threads = max(1, (os.cpu_count() or 1) // processes)
    barrier = work / f"barrier-{variant}-{processes}"
    shutil.rmtree(barrier, ignore_errors=True)
    barrier.mkdir(parents=True)
    outs = [work / f"variant-{variant}-{processes}x-{i}.json" for i in range(processes)]
    children = []
    for index, out in enumerate(outs):
        out.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "bench.ceiling_variants", "--one", variant, "--model", str(model),
               "--batches", ",".join(map(str, batch_sizes)), "--duration", str(duration_s), "--json", str(out),
               "--work", str(work), *sum((["--input", f"{k}={v}"] for k, v in inputs.items()), [])]
        if processes > 1:
            cmd += ["--threads", str(threads), "--barrier", str(barrier), "--index", str(index)]
        if nice:
            cmd = ["nice", "-n", str(nice), *cmd]
        children.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    if processes > 1:
        deadline = time.monotonic() + timeout_s
        while len(list(barrier.glob("ready-*"))) < processes and all(c.poll() is None for c in children):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        (barrier / "go").touch()
    errors = []
    for child in children:
        try:
            stdout, stderr = child.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            stdout, stderr = child.communicate()
        if child.returncode != 0:
            errors.append(" | ".join((stderr or stdout).strip().splitlines()[-3:])[-400:])
    if errors or not all(out.exists() for out in outs):
        return [{"variant": variant, "error": errors[0] if errors else "a copy wrote no result"}]
    copies = [json.loads(out.read_text()) for out in outs]
    return merge_copies(copies) if processes > 1 else copies[0]


def run_variants(variants: list[str], model: Path, inputs: dict[str, Path], batch_sizes: list[int],
                 duration_s: float, work: Path, nice: int = 0, timeout_s: float = 1800,
                 processes: int = 1) -> list[dict]:
    """Each variant in its own subprocess(es); a variant that fails yields a row with its error instead."""
    rows: list[dict] = []
    work.mkdir(parents=True, exist_ok=True)
    for variant in variants:
        rows.extend(run_copies(variant, model, inputs, batch_sizes, duration_s, work, processes, nice, timeout_s))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "trained_model" / "tomato_leaf_lite0.pt")
    parser.add_argument("--input", action="append", default=[], help="NAME=PATH (default: generated leaf and phone)")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per input and batch size")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--processes", type=int, default=1, help="copies of each variant measured at once")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one variant here
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)  # internal, with --one
    parser.add_argument("--barrier", type=Path, default=None, help=argparse.SUPPRESS)  # internal, with --one
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)  # internal, with --one
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="ceiling-"))
    if args.input:
        inputs = {k: Path(v) for k, v in (item.split("=", 1) for item in args.input)}
    else:
        from bench.inputs import prepare_inputs

        inputs = {k: v.path for k, v in prepare_inputs(work / "inputs").items()}
    if args.one:
        rows = measure_one(args.one, args.model, inputs, batches, args.duration, work, args.threads, args.barrier,
                           args.index)
    else:
        rows = run_variants(args.variants.split(","), args.model, inputs, batches, args.duration, work,
                            processes=args.processes)
        for row in rows:
            print(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
