"""The serving transform split in two at the uint8 crop, so a bulk job can send workers the small crop
(image_size² × 3 bytes: 77 KB at 160 px) instead of the photo, or a float tensor four times that size.

`crop` is the geometric half (resize, centre crop) that the API tier runs without a model; `normalise` is the
rest, run by the worker that holds the model. Both come from the bundle's `PreprocessConfig` and the one
`build_transform`: normalising a crop is that transform on an input that is already the crop's size, so
`normalise(cfg, crop(cfg, image))` equals `build_transform(cfg)(image)` (tests/test_crops.py holds them equal).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from model.transforms import PreprocessConfig, build_transform


def crop(cfg: PreprocessConfig, image: Image.Image) -> np.ndarray:
    """RGB PIL image -> the uint8 CHW crop the network's input is normalised from (same kernels as serving)."""
    pixels = F.pil_to_tensor(image)
    pixels = F.resize(pixels, [cfg.resize_size], antialias=True)
    pixels = F.center_crop(pixels, [cfg.image_size, cfg.image_size])
    return pixels.contiguous().numpy()


def normalise(cfg: PreprocessConfig, crops: np.ndarray) -> torch.Tensor:
    """(N, 3, S, S) uint8 crops -> the float batch the network takes; S must be the bundle's image_size."""
    if crops.ndim != 4 or crops.shape[1:] != (3, cfg.image_size, cfg.image_size):
        raise ValueError(f"crops of shape {crops.shape[1:]} do not fit this model's input (3, {cfg.image_size}, "
                         f"{cfg.image_size})")
    on_crop = build_transform(replace(cfg, resize_size=cfg.image_size))  # resize and crop are no-ops at this size
    return torch.stack([on_crop(torch.from_numpy(c)) for c in crops])
