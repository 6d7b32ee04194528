"""Class-activation maps: where the model looked, from the same forward that classified the image.

The network ends in global-average-pool -> linear, so a class's logit is the spatial mean of the last feature map
weighted by that class's classifier row. Weighting each location instead of the mean gives the class-activation map
(CAM) for free: the engines return the feature map as a second output of the one forward (no backward pass, no
extra forwards), and the classifier weights are read from the loaded bundle, never hard-coded.
Faithfulness is measured by a deletion test (bench/explain_faithfulness.py, docs/explanations.md).
"""
from __future__ import annotations

import base64
import struct
import zlib
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from isal import isal_zlib
from torch import nn
from torch.nn import functional as F

OVERLAY_ALPHA = 0.45  # heat over the photo: enough to read the colour, little enough to still see the lesions


def forward_with_features(network: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs, last feature map (N, C_head, h, w)) of the bundle's network; outputs exactly as `network(batch)`."""
    feature_map = network.head(network.blocks(network.stem(batch)))
    return network.head_outputs(network.pool(feature_map).flatten(1)), feature_map


class WithFeatures(nn.Module):
    """The network with its last feature map as a second output: what the ONNX export traces."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return forward_with_features(self.network, batch)


def class_weights(network: nn.Module) -> torch.Tensor:
    """(classes, C_head) classifier rows on the CPU: the CAM weights of every disease class."""
    return network.classifier.weight.detach().float().cpu()


def class_activation_maps(features: torch.Tensor, weights: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(N, h, w) maps in [0, 1]: feature map (N, C_head, h, w) weighted by each image's class row, negative
    evidence cut at 0 and each map divided by its maximum (all zeros when nothing speaks for the class).
    In numpy: these tensors are tiny, and torch's intra-op threads (two in a one-worker server on two cores) cost
    more to wake than the arithmetic (0.24 against 0.06 ms per batch)."""
    maps = features.detach().float().cpu().numpy()
    n, channels, height, width = maps.shape
    rows = weights.detach().float().cpu().numpy()[classes.cpu().numpy().astype(np.int64)]  # (N, C_head)
    cams = np.matmul(rows[:, None, :], maps.reshape(n, channels, height * width)).reshape(n, height, width)
    np.maximum(cams, 0, out=cams)
    cams /= np.maximum(cams.reshape(n, -1).max(1), 1e-12).reshape(-1, 1, 1)
    return torch.from_numpy(cams)


# The heat colours: a blue-green-yellow-red ramp, channel c = clamp(1.5 - |4 * heat - centre_c|, 0, 1), on heat
# quantised to 256 steps (what a colour table would hold), computed per pixel on channel planes.
RAMP_CENTRES = np.array([3.0, 2.0, 1.0], np.float32).reshape(3, 1)
PNG_LEVEL = 1  # ISA-L's level (0-3) for the overlay: 1 compresses as well as 2-3 here, as fast as 0
PNG_FILTER_UP = 2


@lru_cache(maxsize=16)
def resize_matrix(source: int, target: int) -> torch.Tensor:
    """(target, source) matrix of bilinear upsampling along one axis (half-pixel centres, as `F.interpolate` with
    align_corners=False): the map's upsampling becomes two tiny matrix products instead of a per-pixel kernel."""
    identity = torch.eye(source)[None]
    return F.interpolate(identity, size=target, mode="linear", align_corners=False)[0].T.contiguous()


def network_view(tensor: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """The normalised network input (3, H, W) back to an (H, W, 3) float RGB image in [0, 1]: the crop the
    model actually saw, which is what the map refers to."""
    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)
    return (tensor.detach().float().cpu() * std_t + mean_t).clamp(0, 1).permute(1, 2, 0).numpy()


def overlay_png(tensor: torch.Tensor, cam: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> bytes:
    """PNG of the map (upsampled bilinearly) blended over the network's view of the photo. It runs once per
    explained image in a request thread, so it is written for speed (BENCHMARKS.md, "Explanations"): numpy, not
    torch (one thread whatever torch's intra-op setting: with two torch threads the same steps cost 1.4 ms instead
    of 0.5), on three contiguous (1, H * W) channel planes, the tensor's own layout, where every step is one long
    vectorised loop, and the last one casts straight into the (H, W, 3) order PNG wants."""
    height, width = tensor.shape[-2:]
    grid = cam.detach().float().cpu().numpy()
    heat = resize_matrix(grid.shape[0], height).numpy() @ grid @ resize_matrix(grid.shape[1], width).numpy().T
    heat = heat.reshape(1, -1)
    np.clip(heat, 0, 1, out=heat)
    heat *= 255
    np.round(heat, out=heat)
    heat *= 4 / 255  # quantised to the 256 steps a colour table would hold
    planes = heat - RAMP_CENTRES  # (3, H * W)
    np.abs(planes, out=planes)
    np.subtract(1.5, planes, out=planes)
    np.clip(planes, 0, 1, out=planes)
    planes *= 255
    np.round(planes, out=planes)
    planes *= OVERLAY_ALPHA
    keep = 255 * (1 - OVERLAY_ALPHA)  # photo pixel * (1 - alpha) = x * std * keep + mean * keep
    photo = tensor.detach().float().cpu().numpy().reshape(3, -1)
    planes += photo * (np.array(std, np.float32) * keep).reshape(3, 1)
    planes += (np.array(mean, np.float32) * keep).reshape(3, 1)
    np.clip(planes, 0, 255, out=planes)
    np.round(planes, out=planes)
    pixels = np.empty((height, width, 3), np.uint8)
    pixels.transpose(2, 0, 1)[...] = planes.reshape(3, height, width)
    return rgb_png(pixels)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def rgb_png(pixels: np.ndarray, level: int = PNG_LEVEL) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes. Every row gets PNG's "Up" filter (the difference to the row above, one numpy
    subtraction) and is deflated by ISA-L (`isal`), which compresses a 160-px overlay in about 0.2 ms, five times
    faster than zlib's fastest level: the overlay shrinks from 77 KB (stored) to about 45-55 KB, and the bytes are
    what an explained answer pays for most (BENCHMARKS.md, "Explanations"). Pillow's encoder, which tries five
    filters per row, took 2.5 ms."""
    height, width, _ = pixels.shape
    flat = np.ascontiguousarray(pixels).reshape(height, width * 3)
    rows = np.empty((height, width * 3 + 1), np.uint8)
    rows[:, 0] = PNG_FILTER_UP
    rows[0, 1:] = flat[0]  # above the first row PNG assumes zeros
    np.subtract(flat[1:], flat[:-1], out=rows[1:, 1:])  # uint8 arithmetic wraps modulo 256, as the filter wants
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", isal_zlib.compress(rows.tobytes(), level)) + _png_chunk(b"IEND", b""))


def explanation(tensor: torch.Tensor, cam: torch.Tensor, class_name: str, mean: tuple[float, ...],
                std: tuple[float, ...], overlay: bool = True) -> dict[str, Any]:
    """The JSON `explanation` object of one image: the grid, its shape and (optionally) the overlay as base64."""
    grid = [[round(v, 4) for v in row] for row in cam.tolist()]
    result: dict[str, Any] = {"method": "class_activation_map", "class_name": class_name,
                              "shape": [len(grid), len(grid[0]) if grid else 0], "grid": grid}
    if overlay:
        result["overlay_png"] = base64.b64encode(overlay_png(tensor, cam, mean, std)).decode("ascii")
    return result
