"""The two benchmark inputs, written to a temp dir at run time (never committed).

* `leaf`: a 256x256 PlantVillage sample from inference_image/, as shipped.
* `phone`: the same leaf upscaled to a 12-MP 4000x3000 JPEG (quality 90) with a little seeded sensor-like
  grain, so the file size and entropy-decoding cost resemble a real phone photo rather than a smooth blow-up.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "inference_image" / "Early_blight_1.jpg"
PHONE_SIZE = (4000, 3000)


@dataclass(frozen=True)
class BenchInput:
    name: str  # "leaf" or "phone"
    path: Path
    width: int
    height: int
    size_bytes: int

    def read(self) -> bytes:
        return self.path.read_bytes()

    def describe(self) -> str:
        return f"{self.width}x{self.height} JPEG, {self.size_bytes / 1024:.0f} KiB"


def make_phone_jpeg(sample: Path, size: tuple[int, int] = PHONE_SIZE, quality: int = 90, grain: float = 8.0) -> bytes:
    """Upscale `sample` to `size` (bicubic), add seeded Gaussian grain, encode as JPEG."""
    img = Image.open(sample).convert("RGB").resize(size, Image.Resampling.BICUBIC)
    if grain > 0:
        rng = np.random.default_rng(2026)
        arr = np.asarray(img, dtype=np.int16)
        noise = rng.normal(0, grain, arr.shape).astype(np.int16)
        img = Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def prepare_inputs(folder: Path, names: tuple[str, ...] = ("leaf", "phone")) -> dict[str, BenchInput]:
    """Write the requested inputs into `folder` and describe them."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, BenchInput] = {}
    for name in names:
        if name == "leaf":
            data = SAMPLE.read_bytes()
        elif name == "phone":
            data = make_phone_jpeg(SAMPLE)
        else:
            raise ValueError(f"unknown input {name!r} (leaf, phone)")
        path = folder / f"{name}.jpg"
        path.write_bytes(data)
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
        out[name] = BenchInput(name, path, width, height, len(data))
    return out
