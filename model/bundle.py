"""The one-file model bundle: weights, architecture, labels, preprocessing, calibration and metrics together.

Everything is plain tensors, strings and numbers so `torch.load(path, weights_only=True)` can read it,
and no side file (labels, config) can drift away from the weights.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from model.network import EfficientNetLite, NetworkConfig, build_network
from model.transforms import PreprocessConfig

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "state_dict", "arch", "class_names", "display_names", "preprocess", "temperature")


def save_bundle(
    path: Path,
    network: EfficientNetLite,
    class_names: list[str],
    display_names: list[str],
    preprocess: PreprocessConfig,
    temperature: float = 1.0,
    metrics: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    name: str = "tomato-leaf-efficientnet-lite0",
    version: str = "0.0.0-dev",
    verdict_rule: dict[str, Any] | None = None,
) -> None:
    """Write the bundle; float32 weights keep it near 13 MB for Lite0. `verdict_rule`: the reject option's
    thresholds (model.verdict.VerdictRule.to_dict(), chosen by model.reject); without one a bundle is served with
    the 1.x default rule."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
    torch.save(
        {
            "format_version": FORMAT_VERSION,
            "name": name,
            "version": version,
            "state_dict": state,
            "arch": network.config.to_dict(),
            "class_names": list(class_names),
            "display_names": list(display_names),
            "preprocess": preprocess.to_dict(),
            "temperature": float(temperature),
            "metrics": metrics or {},
            "provenance": provenance or {},
            **({"verdict_rule": dict(verdict_rule)} if verdict_rule else {}),
        },
        path,
    )


def read_bundle(path: Path, data: bytes | None = None) -> dict[str, Any]:
    """Load and validate the raw bundle dictionary (safe loader: no pickled code runs).

    `data`: the file's bytes when the caller already read them (to hash exactly what it loads)."""
    source = io.BytesIO(data) if data is not None else path
    raw = torch.load(source, map_location="cpu", weights_only=True)
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise ValueError(f"{path}: not a model bundle, missing {missing}")
    if raw["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path}: bundle format {raw['format_version']} is not supported (expected {FORMAT_VERSION})")
    if len(raw["display_names"]) != len(raw["class_names"]):
        raise ValueError(f"{path}: {len(raw['display_names'])} display names for {len(raw['class_names'])} classes")
    return raw


def network_from_bundle(raw: dict[str, Any]) -> EfficientNetLite:
    """Rebuild the network with a head sized from the class list; refuse weights that disagree."""
    config = NetworkConfig.from_dict({**raw["arch"], "num_classes": len(raw["class_names"])})
    head = raw["state_dict"].get("classifier.weight")
    if head is None or head.shape[0] != config.num_classes:
        rows = None if head is None else head.shape[0]
        raise ValueError(f"classifier head has {rows} outputs but the bundle lists {config.num_classes} classes")
    network = build_network(config)
    network.load_state_dict(raw["state_dict"], strict=True)
    return network.eval()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
