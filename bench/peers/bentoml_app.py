"""BentoML peer (issue 19): `python -m bentoml serve bench.peers.bentoml_app:TomatoLeaf --port P` with
TOMATO_PEER_CONFIG set (bench/systems.py).

Configured as BentoML's docs suggest for a small CPU model: one service worker process per core
(`workers`, one ONNX Runtime thread each, the budget of our gunicorn workers) and adaptive batching on the API
(`batchable=True`, at most our 8 images per batch; `max_latency_ms` is BentoML's latency bound for the whole
request, not a batch window: the dispatcher picks the window itself). A batchable API takes a list: one upload
arrives as a list of one file, BentoML merges concurrent requests' lists, and the answer is a list of one.
"""
from __future__ import annotations

from pathlib import Path

import bentoml

from bench.peers.common import Classifier, PeerConfig

CONFIG = PeerConfig.load()


@bentoml.service(workers=CONFIG.workers, traffic={"timeout": 30})
class TomatoLeaf:
    """Multipart `file` in, [{"class_name", "probabilities"}] out."""

    def __init__(self) -> None:
        self.classifier = Classifier(CONFIG)
        self.classifier.warm_up()

    @bentoml.api(batchable=True, max_batch_size=CONFIG.max_batch_size, max_latency_ms=10_000)
    def classify(self, file: list[Path]) -> list[dict]:
        return self.classifier.predict([self.classifier.preprocess(path.read_bytes()) for path in file])
