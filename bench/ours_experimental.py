"""BENCH-ONLY: serve flask_server.py unchanged except for ONE proposed change, to measure it before anyone edits
the server. Not a product entry point.

    python bench/ours_experimental.py --forward onnxruntime --port 5002 --model trained_model/tomato_leaf_lite0.pt
    python bench/ours_experimental.py --switch-interval 0.0005 --port 5002 --model ...

--forward torchscript|onnxruntime  swaps the bundle's network for a traced + frozen TorchScript module or an ONNX
                                   Runtime session right after `load_bundle` (one C++ call per forward, so the
                                   batcher thread does not need the GIL between layers)
--switch-interval S                sys.setswitchinterval(S): how long a Python thread may hold the GIL before
                                   another one waiting for it gets a turn (CPython's default is 0.005 s)
Every other argument is passed to flask_server.py's own CLI (gunicorn, same settings).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import flask_server  # noqa: E402


class OrtNetwork:
    """Callable stand-in for the nn.Module: batch tensor -> logits tensor, through ONNX Runtime."""

    def __init__(self, network, image_size: int) -> None:
        from bench.ceiling_variants import export_onnx, ort_session

        path = Path(tempfile.mkdtemp(prefix="ours-onnx-")) / "model.onnx"
        export_onnx(network.to(memory_format=torch.contiguous_format), path, image_size)
        self.session = ort_session(path, torch.get_num_threads())

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(["logits"], {"images": batch.contiguous().numpy()})[0])


def swap_forward(kind: str):
    original = flask_server.load_bundle

    def load_bundle(*args, **kwargs):
        bundle = original(*args, **kwargs)
        side = bundle.preprocess.image_size
        if kind == "torchscript":
            with torch.no_grad():
                example = torch.zeros(1, 3, side, side).contiguous(memory_format=torch.channels_last)
                bundle.network = torch.jit.freeze(torch.jit.trace(bundle.network.eval(), example))
        elif kind == "onnxruntime":
            bundle.network = OrtNetwork(bundle.network, side)
        for size in (1, 2, 4, 8, 16, 16):  # warm every shape the batcher will use most
            with torch.inference_mode():
                bundle.network(torch.zeros(size, 3, side, side).contiguous(memory_format=torch.channels_last))
        return bundle

    flask_server.load_bundle = load_bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--forward", choices=("eager", "torchscript", "onnxruntime"), default="eager")
    parser.add_argument("--switch-interval", type=float, default=None)
    args, rest = parser.parse_known_args()
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    if args.forward != "eager":
        swap_forward(args.forward)
    os.chdir(ROOT)
    flask_server.serve(rest)


if __name__ == "__main__":
    main()
