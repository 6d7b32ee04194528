"""Prepare the CPU engine ahead of time: `python -m inference.export [--model PATH]`.

Exporting the bundle to ONNX takes ~10-30 s of CPU; paid at the first server start it delayed the first answer by
most of a minute. `make install` and `make run` call this once per bundle instead, so a server start finds the graph
in the cache (`TOMATO_CACHE_DIR`, default ~/.cache/tomato-leaf, keyed by the bundle's sha256) and only checks it
against eager PyTorch. It goes through the very loader the server uses, so it follows whatever bundle is shipped and
whatever the export writes; a stale or damaged cached file is exported again.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from inference.bundle import DEFAULT_BUNDLE_PATH, load_bundle
from inference.engines import cached_onnx_path, default_cache_dir


def export_for_serving(model: Path = DEFAULT_BUNDLE_PATH, cache_dir: Path | None = None) -> Path:
    """Build (or re-check) the cached ONNX graph of `model`, exactly as a server start would; returns its path."""
    bundle = load_bundle(model, device="cpu", warmup=False, backend="onnxruntime", cache_dir=cache_dir)
    return cached_onnx_path(cache_dir or default_cache_dir(), bundle.sha256, bundle.preprocess.image_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_BUNDLE_PATH, help="model bundle .pt (default: shipped)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: TOMATO_CACHE_DIR or ~/.cache/tomato-leaf")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    path = export_for_serving(args.model, args.cache_dir)
    print(f"ONNX engine for {args.model.name} ready in {time.perf_counter() - started:.1f} s: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
