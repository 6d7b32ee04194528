"""The serving transform is a faster spelling of the torchvision pipeline; it must compute the same tensor."""
from __future__ import annotations

import pytest
import torch
from PIL import Image
from support import sample_files

from inference import decode_image
from model.transforms import PreprocessConfig, build_reference_transform, build_transform

CONFIGS = [
    PreprocessConfig(image_size=160, resize_size=160),  # the shipped model
    PreprocessConfig(image_size=224, resize_size=256),  # resize larger, then crop
    PreprocessConfig(image_size=160, resize_size=128),  # crop larger than the resized image: zero padding
    PreprocessConfig(image_size=160, resize_size=160, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
]


def sample_pictures() -> list[Image.Image | torch.Tensor]:
    pictures = [decode_image(p.read_bytes()) for p in sample_files()[:3]]
    for width, height in ((640, 480), (97, 311), (50, 40), (1001, 1000)):  # landscape, portrait, tiny, odd
        pictures.append(Image.effect_mandelbrot((width, height), (-2, -1.5, 1, 1.5), 60).convert("RGB"))
    pictures.append(torch.randint(0, 256, (3, 256, 300), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)))
    return pictures


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.image_size}from{c.resize_size}-mean{c.mean[0]}")
def test_serving_transform_equals_the_torchvision_pipeline(cfg):
    fast, reference = build_transform(cfg), build_reference_transform(cfg)
    for picture in sample_pictures():
        got, expected = fast(picture), reference(picture)
        assert got.shape == expected.shape == (3, cfg.image_size, cfg.image_size)
        assert got.dtype == torch.float32 and got.is_contiguous()
        torch.testing.assert_close(got, expected.as_subclass(torch.Tensor), atol=1e-6, rtol=0)
