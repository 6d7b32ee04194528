"""Memory and CPU that one hostile upload costs the decoder (issue 15, items 1-4), measured one input per process.

For each payload a fresh Python process loads the serving transform, warms up on a real leaf photo, then runs
exactly what /predict does to an upload before the model sees it (`decode_image`, then the bundle's transform)
and reports: the outcome (ok, or the InvalidImage code / exception type the API would answer with), the growth
of peak RSS over the warmed-up process (ru_maxrss), CPU seconds and wall seconds. No HTTP, so the numbers are
the decoder's alone; a hostile round against the live server belongs to the overload bench.

    .venv/bin/python -m bench.hostile_inputs                 # every payload, a Markdown table
    .venv/bin/python -m bench.hostile_inputs --only tiff_tile_16384 --only png16_7000
    .venv/bin/python -m bench.hostile_inputs --fuzz 5000 --seed 1   # mutated files (tests/test_fuzz.py's mutations)

`--fuzz N` runs N mutated small files in one warmed-up process and reports the outcomes, the CPU of the worst input
and the peak RSS of the whole run above the warm process: an upper bound on what any one of them cost.
"""
from __future__ import annotations

import argparse
import collections
import json
import random
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

from bench import hostile_files as hostile

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "trained_model" / "tomato_leaf_lite0.pt"
LEAF = ROOT / "inference_image" / "Late_blight_1.jpg"

PAYLOADS: dict[str, Callable[[], bytes]] = {
    "leaf_photo_reference": LEAF.read_bytes,
    "wide_png_30000x1": lambda: hostile.wide_png(30_000),
    "wide_png_50000000x1": lambda: hostile.wide_png(50_000_000),
    "tiff_tile_16384": lambda: hostile.tiled_tiff(1, 1, 16_384),
    "tiff_tile_26752": lambda: hostile.tiled_tiff(1, 1, 26_752),
    "png16_7000": lambda: hostile.png16(7_000),
    "png_rgb_7000_within_budget": lambda: hostile.png(7_000, 7_000),  # 49 MP: a legal size, not a bomb
    "jpeg_bad_exif": hostile.jpeg_with_bad_exif,
    "webp_bad_exif": hostile.webp_with_bad_exif,
    "tiff_rational_strip_offsets": hostile.tiff_rational_strip_offsets,
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure_one(name: str) -> dict:
    """In this process: warm up, then decode + transform one payload; what it cost on top of the warm process."""
    import torch

    from inference import InvalidImage, decode_image
    from model.transforms import PreprocessConfig, build_transform

    torch.set_num_threads(1)
    transform = build_transform(PreprocessConfig.from_dict(torch.load(BUNDLE, weights_only=True)["preprocess"]))
    transform(decode_image(LEAF.read_bytes()))  # warm-up: first-call allocations are not the payload's
    data = PAYLOADS[name]()
    peak_before, cpu_before, wall_before = _peak_rss_mb(), time.process_time(), time.perf_counter()
    try:
        transform(decode_image(data))
        outcome = "ok"
    except InvalidImage as exc:
        outcome = f"InvalidImage {exc.code}"
    except Exception as exc:  # what the API would have answered with 500
        outcome = f"{type(exc).__name__} (500)"
    return {"payload": name, "bytes": len(data), "outcome": outcome,
            "peak_rss_growth_mb": round(_peak_rss_mb() - peak_before, 1),
            "cpu_s": round(time.process_time() - cpu_before, 3), "wall_s": round(time.perf_counter() - wall_before, 3)}


def _random_operations(rng: random.Random) -> list[tuple[str, float, int, bytes]]:
    return [(rng.choice(hostile.MUTATIONS), rng.random(), rng.randrange(1 << 16), rng.randbytes(rng.randint(1, 32)))
            for _ in range(rng.randint(1, 6))]


def fuzz(count: int, seed: int) -> dict:
    """Decode + transform `count` mutated corpus files in this process; the worst CPU and the run's peak RSS."""
    import torch

    from inference import InvalidImage, decode_image
    from model.transforms import PreprocessConfig, build_transform

    warnings.simplefilter("ignore")  # Pillow warns about every damaged tag it skips
    torch.set_num_threads(1)
    transform = build_transform(PreprocessConfig.from_dict(torch.load(BUNDLE, weights_only=True)["preprocess"]))
    transform(decode_image(LEAF.read_bytes()))
    corpus, rng = hostile.seed_corpus(), random.Random(seed)
    outcomes: collections.Counter[str] = collections.Counter()
    worst = (0.0, "")
    peak_before = _peak_rss_mb()
    for index in range(count):
        name = rng.choice(sorted(corpus))
        data = hostile.mutate(corpus[name], _random_operations(rng))
        started = time.process_time()
        try:
            transform(decode_image(data))
            outcomes["ok"] += 1
        except InvalidImage as exc:
            outcomes[exc.code] += 1
        except Exception as exc:  # would be a 500
            outcomes[f"{type(exc).__name__} (500)"] += 1
        cpu = time.process_time() - started
        if cpu > worst[0]:
            worst = (cpu, f"#{index} (mutated {name}, {len(data)} bytes)")
    return {"inputs": count, "seed": seed, "outcomes": dict(outcomes.most_common()),
            "worst_cpu_s": round(worst[0], 3), "worst_input": worst[1],
            "peak_rss_growth_mb": round(_peak_rss_mb() - peak_before, 1)}


def run_isolated(name: str, timeout_s: float) -> dict:
    command = [sys.executable, "-m", "bench.hostile_inputs", "--child", name]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"payload": name, "outcome": f"still running after {timeout_s:.0f} s (killed)"}
    if done.returncode != 0:
        return {"payload": name, "outcome": f"process died (rc {done.returncode}): {done.stderr.strip()[-200:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(PAYLOADS), help="payload (repeatable)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per payload before it is killed")
    parser.add_argument("--fuzz", type=int, metavar="N", help="instead: N mutated small files in one process")
    parser.add_argument("--seed", type=int, default=0, help="seed of --fuzz")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fuzz:
        print(json.dumps(fuzz(args.fuzz, args.seed), indent=1))
        return
    if args.child:
        print(json.dumps(measure_one(args.child)))
        return
    print("| payload | bytes | outcome | peak RSS growth (MB) | CPU (s) | wall (s) |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for name in args.only or PAYLOADS:
        row = run_isolated(name, args.timeout)
        print(f"| {name} | {row.get('bytes', '')} | {row['outcome']} | {row.get('peak_rss_growth_mb', '')} "
              f"| {row.get('cpu_s', '')} | {row.get('wall_s', '')} |", flush=True)


if __name__ == "__main__":
    main()
