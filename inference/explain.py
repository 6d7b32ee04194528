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
    evidence cut at 0 and each map divided by its maximum (all zeros when nothing speaks for the class)."""
    rows = weights[classes.long()]  # (N, C_head)
    n, _, height, width = features.shape
    cams = torch.bmm(rows[:, None, :], features.float().flatten(2)).view(n, height, width).clamp_(min=0)
    peak = cams.flatten(1).amax(1).clamp_(min=1e-12).view(-1, 1, 1)
    return cams / peak


def _heat_ramp() -> torch.Tensor:
    """(256, 3) uint8 colours of a blue-green-yellow-red ramp, looked up instead of computed per pixel."""
    x = torch.linspace(0, 4, 256)[:, None]
    return (torch.clamp(1.5 - (x - torch.tensor([3.0, 2.0, 1.0])).abs(), 0, 1) * 255 + 0.5).to(torch.uint8)


HEAT_RAMP = _heat_ramp()
HEAT_RAMP_PLANES = (HEAT_RAMP.float() * OVERLAY_ALPHA).T.contiguous()  # (3, 256): each heat colour's share of a pixel
PNG_LEVEL = 1  # ISA-L's level (0-3) for the overlay: 1 compresses as well as 2-3 here, as fast as 0
PNG_FILTER_UP = 2


def network_view(tensor: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """The normalised network input (3, H, W) back to an (H, W, 3) float RGB image in [0, 1]: the crop the
    model actually saw, which is what the map refers to."""
    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)
    return (tensor.detach().float().cpu() * std_t + mean_t).clamp(0, 1).permute(1, 2, 0).numpy()


def overlay_png(tensor: torch.Tensor, cam: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> bytes:
    """PNG of the map (upsampled bilinearly) blended over the network's view of the photo: the colour table's
    column for each pixel's heat, plus the normalised tensor scaled back to pixels, in one pass over contiguous
    channel planes (the tensor's own layout; a pass over a transposed view cost twice as much), then one copy into
    the (H, W, 3) order PNG wants, as bytes. It runs once per explained image in a request thread (BENCHMARKS.md,
    "Explanations")."""
    height, width = tensor.shape[-2:]
    heat = F.interpolate(cam[None, None].float().cpu(), size=(height, width), mode="bilinear", align_corners=False)
    columns = heat.view(-1).clamp_(0, 1).mul_(255).round_().long()
    blended = HEAT_RAMP_PLANES.index_select(1, columns)  # (3, H * W)
    scale = torch.tensor(std).view(3, 1) * (255 * (1 - OVERLAY_ALPHA))  # photo pixel * (1 - alpha) = x * scale + shift
    shift = torch.tensor(mean).view(3, 1) * (255 * (1 - OVERLAY_ALPHA))
    blended.addcmul_(tensor.detach().float().cpu().reshape(3, -1), scale).add_(shift).clamp_(0, 255)
    pixels = blended.round_().to(torch.uint8).view(3, height, width).permute(1, 2, 0).contiguous()
    return rgb_png(pixels.numpy())


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
