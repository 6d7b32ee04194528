"""Images that are not tomato leaves, for training and measuring the reject option.

Two sources, both split by KIND, never by image, so that the reported rejection rate predicts pictures from
sources the model never saw:

- `../shared/data/not_tomato_leaf/` (other crops' leaves photographed like PlantVillage; Caltech-101 photos).
  Held out of training entirely: strawberry and bell-pepper leaves, and a quarter of the Caltech categories
  (chosen by a hash of the name). The other kinds are split 85/15 by file into train and val.
- Synthetic images made here from nothing but the tomato training photos and random numbers. Made for training:
  plain backgrounds with the leaf cut away, soil/skin-like colour fields, heavily blurred negatives, extreme
  close-ups of leaf texture, tomato photos cut into tiles and shuffled (leaf colour and texture without a leaf's
  shape, so that shape has to count: other crops' leaves share the colour and texture). Made only for testing (never trained on): noise, gradients, geometric shapes,
  checkerboards, flat green fields.

Every image is brought to 256 x 256 the way serving sees photos (shorter side resized, centre crop), so neither
size nor aspect ratio can become the cue.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

SIDE = 256
HELD_OUT_CROPS = ("strawberry", "pepper_bell")  # near out-of-distribution: leaves in the same photo setup
TRAIN_SYNTHETIC = ("background", "colour_field", "blurred_photo", "texture_closeup", "leaf_mosaic")
TEST_SYNTHETIC = ("noise", "gradient", "shapes", "checkerboard", "green_field")


@dataclass(frozen=True)
class Negative:
    file: str  # relative to the not_tomato_leaf root, or "synthetic:<kind>:<n>"
    kind: str  # "other_crop_leaf", "photo" or a synthetic kind
    category: str
    split: str  # "train", "val" or "heldout"


def _bucket(text: str, modulo: int) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % modulo


def split_of_negative(kind: str, category: str, file: str) -> str:
    """Held-out kinds never reach training; the rest are split 85/15 by file."""
    if kind == "other_crop_leaf" and category.split("__")[0] in HELD_OUT_CROPS:
        return "heldout"
    if kind == "photo" and _bucket(category, 4) == 0:
        return "heldout"
    return "val" if _bucket(file, 100) < 15 else "train"


def read_negatives(root: Path) -> list[Negative]:
    with open(root / "manifest.csv", newline="") as fh:
        return [Negative(r["file"], r["kind"], r["category"], split_of_negative(r["kind"], r["category"], r["file"]))
                for r in csv.DictReader(fh)]


def square(image: Image.Image, side: int = SIDE) -> np.ndarray:
    """RGB image -> uint8 CHW side x side: shorter side resized, centre crop (the serving geometry)."""
    image = image.convert("RGB")
    scale = side / min(image.size)
    w, h = max(side, round(image.width * scale)), max(side, round(image.height * scale))
    image = image.resize((w, h), Image.BILINEAR)
    left, top = (w - side) // 2, (h - side) // 2
    return np.asarray(image.crop((left, top, left + side, top + side))).transpose(2, 0, 1).copy()


def load_negative_images(root: Path, negatives: list[Negative]) -> torch.Tensor:
    arrays = []
    for n in negatives:
        with Image.open(root / n.file) as image:
            arrays.append(square(image))
    return torch.from_numpy(np.stack(arrays)) if arrays else torch.empty(0, 3, SIDE, SIDE, dtype=torch.uint8)


# ---- synthetic negatives ----------------------------------------------------------------------------------------

def _to_chw(array: np.ndarray) -> np.ndarray:
    return np.clip(array, 0, 255).astype(np.uint8).transpose(2, 0, 1).copy()


def _smooth_field(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Low-frequency noise in 0..1, SIDE x SIDE."""
    grid = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(grid.resize((SIDE, SIDE), Image.BICUBIC), dtype=np.float32) / 255


def _colour_field(rng: np.random.Generator) -> np.ndarray:
    """Soil-, skin-, wood- or sky-like colour with smooth variation and grain."""
    base = rng.choice([[120, 85, 60], [200, 160, 130], [90, 70, 50], [160, 120, 90], [140, 170, 210], [110, 110, 100]])
    base = base + rng.normal(0, 20, 3)
    shade = _smooth_field(rng, int(rng.integers(2, 9)))[..., None]
    image = base * (0.6 + 0.8 * shade) + rng.normal(0, rng.uniform(2, 15), (SIDE, SIDE, 3))
    return _to_chw(image)


def _background(rng: np.random.Generator, leaves: torch.Tensor) -> np.ndarray | None:
    """A corner of a tomato photo with no leaf in it (low chroma everywhere), upscaled: the plain backdrop."""
    image = leaves[int(rng.integers(len(leaves)))].permute(1, 2, 0).numpy().astype(np.float32)
    size = int(rng.integers(40, 80))
    y = int(rng.choice([0, SIDE - size]))
    x = int(rng.choice([0, SIDE - size]))
    patch = image[y : y + size, x : x + size]
    chroma = (patch.max(2) - patch.min(2)) / 255
    if (chroma > 0.18).mean() > 0.03:
        return None
    return np.asarray(Image.fromarray(patch.astype(np.uint8)).resize((SIDE, SIDE), Image.BICUBIC)).transpose(2, 0, 1).copy()


def _texture_closeup(rng: np.random.Generator, leaves: torch.Tensor) -> np.ndarray:
    """An extreme close-up (about 2-4 % of the photo's area) of the leaf's middle, upscaled: texture, no leaf."""
    image = leaves[int(rng.integers(len(leaves)))]
    size = int(rng.integers(36, 52))
    y, x = (int(v) for v in rng.integers(SIDE // 2 - 48, SIDE // 2 + 48 - size, 2))
    patch = image[:, y : y + size, x : x + size].permute(1, 2, 0).numpy()
    return np.asarray(Image.fromarray(patch).resize((SIDE, SIDE), Image.BICUBIC)).transpose(2, 0, 1).copy()


def _leaf_mosaic(rng: np.random.Generator, leaves: torch.Tensor) -> np.ndarray:
    """A tomato photo cut into a k x k grid of tiles, shuffled and turned: no leaf outline survives."""
    image = leaves[int(rng.integers(len(leaves)))].numpy()
    k = int(rng.integers(3, 6))
    side = SIDE // k
    tiles = [image[:, y * side:(y + 1) * side, x * side:(x + 1) * side] for y in range(k) for x in range(k)]
    order = rng.permutation(len(tiles))
    rows = [np.concatenate([np.rot90(tiles[order[y * k + x]], int(rng.integers(4)), axes=(1, 2))
                            for x in range(k)], axis=2) for y in range(k)]
    mosaic = np.concatenate(rows, axis=1).transpose(1, 2, 0)
    return np.asarray(Image.fromarray(np.ascontiguousarray(mosaic)).resize((SIDE, SIDE), Image.BILINEAR)).transpose(2, 0, 1).copy()


def _blurred(rng: np.random.Generator, photos: torch.Tensor) -> np.ndarray:
    image = Image.fromarray(photos[int(rng.integers(len(photos)))].permute(1, 2, 0).numpy())
    return np.asarray(image.filter(ImageFilter.GaussianBlur(float(rng.uniform(6, 14))))).transpose(2, 0, 1).copy()


def _noise(rng: np.random.Generator) -> np.ndarray:
    return _to_chw(rng.random((SIDE, SIDE, 3)) * 255)


def _gradient(rng: np.random.Generator) -> np.ndarray:
    t = np.linspace(0, 1, SIDE, dtype=np.float32)
    ramp = t[None, :] if rng.random() < 0.5 else t[:, None]
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    return _to_chw(a + (b - a) * ramp[..., None] * np.ones((SIDE, SIDE, 1)))


def _shapes(rng: np.random.Generator) -> np.ndarray:
    image = Image.new("RGB", (SIDE, SIDE), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 12))):
        x0, y0 = (int(v) for v in rng.integers(0, SIDE - 20, 2))
        x1, y1 = x0 + int(rng.integers(15, 120)), y0 + int(rng.integers(15, 120))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    return np.asarray(image).transpose(2, 0, 1).copy()


def _checkerboard(rng: np.random.Generator) -> np.ndarray:
    cell = int(rng.integers(8, 64))
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    mask = ((yy // cell + xx // cell) % 2)[..., None]
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    return _to_chw(np.where(mask, a, b).astype(np.float32))


def _green_field(rng: np.random.Generator) -> np.ndarray:
    """Leaf-green everywhere with smooth shading: colour alone must not make a leaf."""
    base = np.array([60, 140, 50]) + rng.normal(0, 20, 3)
    shade = _smooth_field(rng, int(rng.integers(2, 6)))[..., None]
    return _to_chw(base * (0.7 + 0.6 * shade) + rng.normal(0, 6, (SIDE, SIDE, 3)))


def synthetic_negatives(kind: str, count: int, seed: int, leaves: torch.Tensor | None = None,
                        photos: torch.Tensor | None = None) -> torch.Tensor:
    """`count` uint8 3 x 256 x 256 images of one synthetic kind, reproducible from `seed`.

    `leaves`: tomato photos (uint8 N x 3 x 256 x 256) for "background", "texture_closeup" and "leaf_mosaic";
    `photos`: non-leaf photos for "blurred_photo"."""
    rng = np.random.default_rng([seed, _bucket(kind, 1 << 30)])
    made: list[np.ndarray] = []
    attempts = 0
    while len(made) < count:
        attempts += 1
        if kind == "background":
            image = _background(rng, leaves)
            if image is None:
                if attempts > 50 * count:
                    break
                continue
        elif kind == "texture_closeup":
            image = _texture_closeup(rng, leaves)
        elif kind == "leaf_mosaic":
            image = _leaf_mosaic(rng, leaves)
        elif kind == "blurred_photo":
            image = _blurred(rng, photos)
        else:
            image = {"colour_field": _colour_field, "noise": _noise, "gradient": _gradient, "shapes": _shapes,
                     "checkerboard": _checkerboard, "green_field": _green_field}[kind](rng)
        made.append(image)
    return torch.from_numpy(np.stack(made))
