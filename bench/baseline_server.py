"""BASELINE FOR BENCHMARKS ONLY -- not the product. The "seed tutorial" way to serve a PyTorch model with Flask.

One forward per request, run directly in whichever request thread received the upload: no batcher, no
queue bound, no deadline, no validation beyond what decoding needs. It uses the same model bundle and the
same inference helpers as our server (`inference.load_bundle`, `decode_image`, `predict` on a list of one
image) with eager PyTorch as the tutorial has it, so what differs is how requests reach the model and the
forward engine (ours: ONNX Runtime; `TOMATO_BACKEND=eager` on ours isolates the first).

    python bench/baseline_server.py --port 5001 --model trained_model/tomato_leaf_lite0.pt            # gunicorn
    python bench/baseline_server.py --port 5001 --model ... --server flask    # Flask's threaded dev server

`--server gunicorn` (default): 1 process, gthread, 32 threads (ours runs 128 threads but only one forward at a time).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from flask import Flask, jsonify, request

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from inference import decode_image, load_bundle, predict  # noqa: E402


def create_app(model_path: str) -> Flask:
    torch.set_num_threads(int(os.environ.get("TOMATO_TORCH_THREADS", "0")) or os.cpu_count() or 1)
    device = os.environ.get("TOMATO_DEVICE", "cpu")  # bench/gpu_check.sh sets cuda for both servers
    bundle = load_bundle(model_path, device=device, warmup=True, backend="eager")  # the tutorial's plain PyTorch
    app = Flask(__name__)

    @app.get("/ping")
    def ping():
        return jsonify(status="ok")

    @app.post("/predict")
    def predict_route():
        upload = request.files["file"]
        image = decode_image(upload.read())
        prediction = predict(bundle, [image])[0]
        return jsonify(prediction.to_dict())

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Baseline Flask server (benchmarks only).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--model", required=True)
    parser.add_argument("--server", choices=("gunicorn", "flask"), default="gunicorn")
    parser.add_argument("--threads", type=int, default=32, help="gunicorn request threads")
    args = parser.parse_args()
    if args.server == "flask":
        create_app(args.model).run(host=args.host, port=args.port, threaded=True)
        return

    from gunicorn.app.base import BaseApplication

    class Baseline(BaseApplication):
        def load_config(self) -> None:
            settings = {"bind": f"{args.host}:{args.port}", "workers": 1, "threads": args.threads,
                        "worker_class": "gthread", "timeout": 60, "backlog": 256, "loglevel": "warning",
                        "control_socket_disable": True}
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            return create_app(args.model)

    Baseline().run()


if __name__ == "__main__":
    main()
