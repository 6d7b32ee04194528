"""BENCH-ONLY: serve flask_server.py unchanged except for ONE proposed change, to measure it before anyone edits
the server. Not a product entry point.

    python bench/ours_experimental.py --forward torchscript --port 5002 --model trained_model/tomato_leaf_lite0.pt
    python bench/ours_experimental.py --switch-interval 0.0005 --port 5002 --model ...

--forward torchscript              swaps the bundle's engine for a traced + frozen TorchScript module right after
                                   `load_bundle` (ONNX Runtime, the product default, and eager are plain
                                   settings: TOMATO_BACKEND=onnxruntime|eager)
--switch-interval S                sys.setswitchinterval(S): how long a Python thread may hold the GIL before
                                   another one waiting for it gets a turn (CPython's default is 0.005 s)
Every other argument is passed to flask_server.py's own CLI (gunicorn, same settings).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import flask_server  # noqa: E402
from bench.ceiling_variants import torchscript_engine  # noqa: E402
from inference.bundle import warm_up  # noqa: E402


def serve_torchscript() -> None:
    """Make flask_server load the bundle eager, then run its forward as frozen TorchScript."""
    original = flask_server.load_bundle

    def load_bundle(*args, **kwargs):
        bundle = original(*args, **{**kwargs, "backend": "eager"})
        bundle.engine = torchscript_engine(bundle.network, bundle.preprocess.image_size)
        warm_up(bundle, (1, 2, 4, 8))  # every shape the batcher will use most
        return bundle

    flask_server.load_bundle = load_bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--forward", choices=("default", "torchscript"), default="default")
    parser.add_argument("--switch-interval", type=float, default=None)
    args, rest = parser.parse_known_args()
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    if args.forward == "torchscript":
        serve_torchscript()
    os.chdir(ROOT)
    flask_server.serve(rest)


if __name__ == "__main__":
    main()
