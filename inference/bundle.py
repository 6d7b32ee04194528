"""Load the shipped model bundle once: network, transform, labels and calibration travel together."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inference.engines import Engine, build_engine
from model.bundle import network_from_bundle, read_bundle
from model.transforms import PreprocessConfig, Transform, build_transform
from model.verdict import LEGACY_RULE, VerdictRule

DEFAULT_BUNDLE_PATH = Path(__file__).resolve().parent.parent / "trained_model" / "tomato_leaf_lite0.pt"


@dataclass
class ModelBundle:
    """A ready-to-run model: everything `predict` needs, loaded and warmed up."""

    network: nn.Module  # eager reference (evaluation, equivalence checks)
    engine: Engine  # what `predict` runs: eager or ONNX Runtime, same logits within 1e-3
    transform: Transform
    preprocess: PreprocessConfig
    class_names: list[str]
    display_names: list[str]
    temperature: float
    verdict_rule: VerdictRule  # thresholds of the reject option (LEGACY_RULE for 1.x bundles)
    device: torch.device
    name: str
    version: str
    sha256: str
    path: str
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """Plain-Python identity of the model, for API responses and logs."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256, "device": str(self.device),
                "backend": self.engine.name}


def resolve_device(device: str | None) -> torch.device:
    """`None`/"auto" picks CUDA when present, else CPU."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_bundle(path: str | Path = DEFAULT_BUNDLE_PATH, device: str | None = None, warmup: bool = True,
                backend: str = "auto", threads: int = 0, cache_dir: Path | None = None) -> ModelBundle:
    """Read, validate and rebuild the bundle on `device`, in eval mode, optionally warmed up.

    backend: "auto" (ONNX Runtime on the CPU when installed, else eager), "eager" or "onnxruntime";
    threads: intra-op threads of the ONNX Runtime session (0 = torch.get_num_threads());
    cache_dir: where the derived ONNX file is kept (default: TOMATO_CACHE_DIR or ~/.cache/tomato-leaf).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model bundle not found: {path}")
    data = path.read_bytes()  # read once: the sha256 reported is that of the weights actually loaded
    raw = read_bundle(path, data)
    target = resolve_device(device)
    network = network_from_bundle(raw).to(target).to(memory_format=torch.channels_last)
    preprocess = PreprocessConfig.from_dict(raw["preprocess"])
    sha256 = hashlib.sha256(data).hexdigest()
    engine = build_engine(backend, network, target, sha256, preprocess.image_size, threads, cache_dir)
    bundle = ModelBundle(
        network=network,
        engine=engine,
        transform=build_transform(preprocess),
        preprocess=preprocess,
        class_names=list(raw["class_names"]),
        display_names=list(raw["display_names"]),
        temperature=float(raw["temperature"]),
        verdict_rule=VerdictRule.from_dict(raw["verdict_rule"]) if "verdict_rule" in raw else LEGACY_RULE,
        device=target,
        name=str(raw.get("name", path.stem)),
        version=str(raw.get("version", "0")),
        sha256=sha256,
        path=str(path),
        metrics=dict(raw.get("metrics", {})),
        provenance=dict(raw.get("provenance", {})),
    )
    if warmup:
        warm_up(bundle)
    return bundle


def warm_up(bundle: ModelBundle, batch_sizes: tuple[int, ...] = (1, 2, 8)) -> None:
    """Run a few forwards so the first real request does not pay for lazy initialisation."""
    side = bundle.preprocess.image_size
    for size in batch_sizes:
        bundle.engine(torch.zeros(size, 3, side, side, device=bundle.device))
