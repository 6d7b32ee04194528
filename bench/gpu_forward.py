"""Forward and end-to-end cost on a CUDA device: `python -m bench.gpu_forward [--model PATH] [--json OUT]`.

Part of bench/gpu_check.sh. On the GPU both servers run eager PyTorch, so what can differ is how images reach the
model: one forward per image (the tutorial baseline) against batches (ours). Times, with the device synchronised:
- the forward alone at batch 1, 8 and 32 (per image), the batch already on the device;
- a 12-MP phone JPEG end to end in one process: decode (ours with Pillow's draft mode; the baseline decodes in full,
  then resizes), preprocess, copy to the device, forward, softmax and verdict.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

from bench.inputs import make_phone_jpeg
from inference import DEFAULT_BUNDLE_PATH, decode_image, load_bundle, predict
from inference.predict import forward, preprocess

SAMPLE = Path(__file__).resolve().parent.parent / "inference_image" / "Early_blight_1.jpg"


def timed_ms(step, repeats: int, device: torch.device) -> float:
    """Median wall milliseconds of `step()` with the device synchronised around each call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    samples = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        step()
        sync()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def naive_decode(data: bytes) -> Image.Image:
    """What a tutorial server does with an upload: decode every pixel, then let the transform resize."""
    return Image.open(io.BytesIO(data)).convert("RGB")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_BUNDLE_PATH)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--device", default="cuda", help="cuda (the point of it); cpu only to try the script")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark measures the GPU path")
    bundle = load_bundle(args.model, device=args.device, backend="eager")
    device = bundle.device
    side = bundle.preprocess.image_size
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result: dict = {"device": name, "torch": torch.__version__, "forward_ms_per_image": {}}
    with torch.inference_mode():
        for size in (1, 8, 32):
            batch = torch.rand(size, 3, side, side, device=device)
            per_call = timed_ms(lambda: forward(bundle, batch), args.repeats, device)
            result["forward_ms_per_image"][f"batch {size}"] = round(per_call / size, 3)
    phone = make_phone_jpeg(SAMPLE)
    result["phone_12mp_end_to_end_ms"] = {
        "ours (draft decode)": round(timed_ms(lambda: predict(bundle, [decode_image(phone)]), 10, device), 1),
        "baseline (full decode)": round(timed_ms(lambda: predict(bundle, [naive_decode(phone)]), 10, device), 1),
    }
    leaf = SAMPLE.read_bytes()
    result["leaf_preprocess_ms"] = round(timed_ms(lambda: preprocess(bundle, decode_image(leaf)), 20, device), 2)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
