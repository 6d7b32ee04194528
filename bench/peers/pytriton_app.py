"""PyTriton peer (issue 19): `.venv-pytriton/bin/python -m bench.peers.pytriton_app` with TOMATO_PEER_CONFIG set.

Triton Inference Server (the binary shipped in the nvidia-pytriton wheel) in front of a Python inference function,
configured as PyTriton's docs suggest: Triton's dynamic batcher (our 8 images and 2 ms queue delay) and one model
instance per core, each with one ONNX Runtime thread (the budget of our gunicorn workers). Its natural input is
the KServe v2 protocol, so the image travels as one BYTES element in the binary extension
(bench/systems.triton_request) and the answer is the probabilities tensor. gRPC and metrics are off: the bench
speaks HTTP only.
"""
from __future__ import annotations

import os
import sysconfig

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from bench.peers.common import Classifier, PeerConfig

CONFIG = PeerConfig.load()
# Triton's Python-backend stub links libpython3.11.so by name; without this it finds the OS's 3.11.2 library, which
# does not match this interpreter's 3.11.7 standard library (RLock._recursion_count missing) and every model
# instance fails to start. Point it at this interpreter's own library (inherited by tritonserver and its stubs).
os.environ["LD_LIBRARY_PATH"] = ":".join(
    filter(None, [sysconfig.get_config_var("LIBDIR"), os.environ.get("LD_LIBRARY_PATH")]))


def instance(classifier: Classifier):
    """One model instance's inference function: a batch of uploads -> their probabilities."""

    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        arrays = [classifier.preprocess(bytes(row[0])) for row in image]
        return {"probabilities": classifier.probabilities(arrays).astype(np.float32)}

    return infer


def main() -> None:
    classifiers = [Classifier(CONFIG) for _ in range(CONFIG.workers)]
    for classifier in classifiers:
        classifier.warm_up()
    config = TritonConfig(http_address="127.0.0.1", http_port=CONFIG.port, allow_grpc=False, allow_metrics=False)
    with Triton(config=config) as triton:
        triton.bind(
            model_name="tomato", infer_func=[instance(c) for c in classifiers],
            inputs=[Tensor(name="image", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(len(CONFIG.class_names),))],
            config=ModelConfig(max_batch_size=CONFIG.max_batch_size, batcher=DynamicBatcher(
                max_queue_delay_microseconds=int(CONFIG.batch_wait_ms * 1000))),
        )
        triton.serve()


if __name__ == "__main__":
    main()
