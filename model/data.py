"""Dataset plumbing: the manifest, a leaf-group split that never leaks a leaf across splits, and tensors."""
from __future__ import annotations

import csv
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

SPLITS = ("train", "val", "test")
# Human-readable names shown to users; keys are the ImageFolder class folders.
DISPLAY_NAMES: dict[str, str] = {
    "Bacterial_spot": "Bacterial spot",
    "Early_blight": "Early blight",
    "Late_blight": "Late blight",
    "Leaf_Mold": "Leaf mold",
    "Mosaic_virus": "Tomato mosaic virus",
    "Septoria_leaf_spot": "Septoria leaf spot",
    "Spider_mites": "Spider mites (two-spotted)",
    "Target_Spot": "Target spot",
    "Yellow_Leaf_Curl_Virus": "Tomato yellow leaf curl virus",
    "healthy": "Healthy",
}


@dataclass(frozen=True)
class Sample:
    path: str  # relative to the data root, as in manifest.csv
    class_name: str
    leaf_group: str
    split: str


def split_of(leaf_group: str, val_pct: int = 10, test_pct: int = 10) -> str:
    """Assign a whole leaf group to one split by a stable hash, so every photo of a leaf lands together."""
    bucket = int(hashlib.sha256(leaf_group.encode()).hexdigest(), 16) % 100
    if bucket < test_pct:
        return "test"
    if bucket < test_pct + val_pct:
        return "val"
    return "train"


def read_manifest(data_root: Path) -> list[Sample]:
    with open(data_root / "manifest.csv", newline="") as fh:
        return [Sample(row["file"], row["cls"], row["leaf_group"], split_of(row["leaf_group"])) for row in csv.DictReader(fh)]


def write_split(samples: list[Sample], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "class", "leaf_group", "split"])
        for s in samples:
            writer.writerow([s.path, s.class_name, s.leaf_group, s.split])


def read_split(path: Path) -> list[Sample]:
    with open(path, newline="") as fh:
        return [Sample(r["file"], r["class"], r["leaf_group"], r["split"]) for r in csv.DictReader(fh)]


def class_names_of(samples: list[Sample]) -> list[str]:
    return sorted({s.class_name for s in samples})


def _load_uint8(path: Path, side: int) -> np.ndarray:
    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (side, side):
            img = img.resize((side, side), Image.BILINEAR)
        return np.asarray(img).transpose(2, 0, 1).copy()


def load_images(data_root: Path, samples: list[Sample], side: int = 256, threads: int = 4) -> torch.Tensor:
    """Decode every image once into one uint8 N x 3 x side x side tensor (the whole set fits in RAM)."""
    with ThreadPoolExecutor(threads) as pool:
        arrays = list(pool.map(lambda s: _load_uint8(data_root / s.path, side), samples))
    return torch.from_numpy(np.stack(arrays))


class TensorImageDataset(Dataset):
    """Pre-decoded uint8 images plus labels, with a per-sample transform (augmentation)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])
