"""LitServe peer (issue 19): `python -m bench.peers.litserve_app` with TOMATO_PEER_CONFIG set (bench/systems.py).

Configured as LitServe's docs suggest for a small CPU model: LitServe's own batching (max_batch_size with a short
batch_timeout, the same 8 images and 2 ms as our micro-batcher) and one inference worker process per core
(workers_per_device), each with one ONNX Runtime thread: the budget our gunicorn workers have. Each LitServe worker
decodes its requests, batches them and runs the forward; the API server process only speaks HTTP.
"""
from __future__ import annotations

import litserve as ls

from bench.peers.common import Classifier, PeerConfig

CONFIG = PeerConfig.load()


class TomatoLeafAPI(ls.LitAPI):
    """Multipart `file` in, {"class_name", "probabilities"} out, like our /predict's first prediction."""

    def setup(self, device: str) -> None:
        self.classifier = Classifier(CONFIG)
        self.classifier.warm_up()

    def decode_request(self, request):
        return self.classifier.preprocess(request["file"].file.read())

    def batch(self, inputs: list) -> list:
        return inputs  # Classifier.predict stacks them itself

    def predict(self, batch: list) -> list[dict]:
        return self.classifier.predict(batch)

    def unbatch(self, output: list[dict]) -> list[dict]:
        return output

    def encode_response(self, output: dict) -> dict:
        return output


def main() -> None:
    api = TomatoLeafAPI(max_batch_size=CONFIG.max_batch_size, batch_timeout=CONFIG.batch_wait_ms / 1000.0)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=CONFIG.workers, timeout=30)
    server.run(host="127.0.0.1", port=CONFIG.port, generate_client_file=False)


if __name__ == "__main__":
    main()
