"""Forward engines: what actually runs a batch through the network at serving time.

Eager PyTorch is the reference (training, evaluation, CUDA). On the CPU, ONNX Runtime runs the same graph about
two times faster for this small CNN and releases the GIL for the whole forward (bench/ceiling_variants.py,
BENCHMARKS.md), so it is the default there. The ONNX file is derived from the bundle on first use and cached by the
bundle's sha256; every new session is checked against eager on a probe batch before it is used.
"""
from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import nn

from inference.explain import WithFeatures, forward_with_features

log = logging.getLogger(__name__)

BACKENDS = ("auto", "eager", "onnxruntime")
PROBE_ATOL = 1e-3  # logits: eager vs ONNX Runtime differ by ~1e-6 in practice; a broken export differs by >1


class Engine(Protocol):
    """batch (N, 3, H, W) float tensor on the bundle's device -> logits (N, classes) float tensor; `explain` also
    returns the last feature map (N, C_head, h, w) of the same forward, for class-activation maps."""

    name: str

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...

    def explain(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class EagerEngine:
    """A PyTorch module (the network itself, or a traced/compiled form of it) under inference_mode, fed
    channels_last by default."""

    def __init__(self, network: Callable[[torch.Tensor], torch.Tensor], name: str = "eager",
                 memory_format: torch.memory_format = torch.channels_last) -> None:
        self.network = network
        self.name = name
        self.memory_format = memory_format

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.network(batch.contiguous(memory_format=self.memory_format))

    def explain(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            return forward_with_features(self.network, batch.contiguous(memory_format=self.memory_format))


class OnnxRuntimeEngine:
    """An ONNX Runtime CPU session; one C++ call per batch, with the GIL released."""

    name = "onnxruntime"

    def __init__(self, session) -> None:
        self.session = session

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Asks for the logits only: the feature map is an intermediate of that graph anyway, so a forward without
        explanation costs what it did when the graph had one output (bench/explain_cost.py)."""
        array = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(["logits"], {"images": array})[0])

    def explain(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        array = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        logits, features = self.session.run(["logits", "features"], {"images": array})
        return torch.from_numpy(logits), torch.from_numpy(features)


def default_cache_dir() -> Path:
    """TOMATO_CACHE_DIR, else $XDG_CACHE_HOME/tomato-leaf, else ~/.cache/tomato-leaf."""
    if os.environ.get("TOMATO_CACHE_DIR"):
        return Path(os.environ["TOMATO_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tomato-leaf"


def export_onnx(network: nn.Module, path: Path, image_size: int) -> Path:
    """Write `network` as ONNX with a dynamic batch axis: input "images", outputs "logits" and "features" (the last
    feature map, for class-activation maps: inference/explain.py); the module is untouched."""
    network = WithFeatures(copy.deepcopy(network).to("cpu", memory_format=torch.contiguous_format)).eval()
    example = torch.zeros(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(
        network, (example,), None, input_names=["images"], output_names=["logits", "features"],
        dynamic_shapes=({0: batch},), dynamo=True, optimize=True, verbose=False,
    )
    program.save(str(path))
    return path


def ort_session(path: Path, threads: int, spin: bool = False):
    """A CPU session with `threads` intra-op threads. Spinning is off by default: spinning threads would take the
    CPU from the request threads that decode the next images while this batch runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def cached_onnx_path(cache_dir: Path, bundle_sha256: str, image_size: int) -> Path:
    # "-cam": the graph with the feature-map output; a cached one-output graph of an older release is not reused
    return cache_dir / f"{bundle_sha256[:32]}-{image_size}px-cam-torch{torch.__version__.split('+')[0]}.onnx"


def build_onnx_engine(network: nn.Module, bundle_sha256: str, image_size: int, threads: int,
                      cache_dir: Path | None = None) -> OnnxRuntimeEngine:
    """Reuse the cached export when it loads and agrees with eager; otherwise export again (atomically)."""
    cache_dir = cache_dir or default_cache_dir()
    path = cached_onnx_path(cache_dir, bundle_sha256, image_size)
    if path.is_file():
        try:
            engine = OnnxRuntimeEngine(ort_session(path, threads))
            check_agrees(engine, network, image_size)
            return engine
        except Exception as exc:  # stale or damaged cache file: rebuild it below
            log.warning("ignoring cached ONNX model %s: %s", path, exc)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=cache_dir))  # same file system as `path`: the final rename is atomic
        cacheable = True
    except OSError as exc:  # read-only home, odd container: serve anyway, export again at every start
        log.warning("cannot write the ONNX cache %s (%s); exporting to a temporary folder", cache_dir, exc)
        work, cacheable = Path(tempfile.mkdtemp()), False
    log.info("exporting the model to ONNX (once per bundle): %s", path)
    try:
        staged = export_onnx(network, work / "model.onnx", image_size)
        engine = OnnxRuntimeEngine(ort_session(staged, threads))  # the session keeps the graph in memory
        check_agrees(engine, network, image_size)
        if cacheable:
            os.replace(staged, path)  # concurrent workers never see half a file
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return engine


def check_agrees(engine: Engine, network: nn.Module, image_size: int) -> None:
    """Raise unless `engine` gives eager's logits and feature map (explanations) on a fixed probe batch of two
    images."""
    generator = torch.Generator().manual_seed(1234)
    probe = torch.randn(2, 3, image_size, image_size, generator=generator)
    device = next(network.parameters()).device
    with torch.inference_mode():
        expected = forward_with_features(network, probe.to(device).contiguous(memory_format=torch.channels_last))
    got_logits = engine(probe)
    got = (got_logits, engine.explain(probe)[1])
    for what, value, reference in zip(("logits", "feature map"), got, expected):
        value, reference = value.float().cpu(), reference.float().cpu()
        if value.shape != reference.shape or not torch.allclose(value, reference, atol=PROBE_ATOL, rtol=0):
            diff = (value - reference).abs().max().item() if value.shape == reference.shape else float("nan")
            raise RuntimeError(f"{engine.name} disagrees with eager PyTorch on the probe batch's {what} "
                               f"(max |diff| {diff:.3g})")


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401  (torch.onnx.export(dynamo=True) needs it)
    except ImportError:
        return False
    return True


def build_engine(backend: str, network: nn.Module, device: torch.device, bundle_sha256: str, image_size: int,
                 threads: int = 0, cache_dir: Path | None = None) -> Engine:
    """`auto`: ONNX Runtime on the CPU when installed, eager otherwise (and always on CUDA)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    threads = threads or torch.get_num_threads()
    if backend == "auto":
        if device.type != "cpu" or not onnxruntime_available():
            return EagerEngine(network)
        try:
            return build_onnx_engine(network, bundle_sha256, image_size, threads, cache_dir)
        except Exception:  # a model ONNX cannot take must still be served
            log.exception("ONNX Runtime engine unavailable; serving with eager PyTorch")
            return EagerEngine(network)
    if backend == "onnxruntime":
        if device.type != "cpu":
            raise ValueError("the onnxruntime backend runs on the CPU only; use device='cpu' or backend='eager'")
        return build_onnx_engine(network, bundle_sha256, image_size, threads, cache_dir)
    return EagerEngine(network)
