"""Ray Serve peer (issue 19): `python -m bench.peers.rayserve_app` with TOMATO_PEER_CONFIG set (bench/systems.py).

Configured as Ray Serve's docs suggest for a small model on a 2-core box: a local Ray with as many CPUs as our
thread budget, one replica per core (num_cpus=1, one ONNX Runtime thread each, like our gunicorn workers), and
`@serve.batch` with our batch size and wait. `max_ongoing_requests` is raised above the batch size (Ray's default
of 5 would cap every batch at 5). The replica decodes each upload in its request handler, so the batch function
only stacks and runs the forward. Ray's HTTP proxy (one actor) routes to the replicas.
"""
from __future__ import annotations

import os
import signal
import sys
import time

import ray
from ray import serve
from starlette.requests import Request

from bench.peers.common import Classifier, PeerConfig

CONFIG = PeerConfig.load()
# Start-up checks only: on a busy 2-core host the proxy's worker process takes longer than Ray's 5 s to import, and
# Ray kills and restarts it forever. Set before ray.init so the raylet and every worker inherit them.
for _name in ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S"):
    os.environ.setdefault(_name, "60")


@serve.deployment(num_replicas=CONFIG.workers, ray_actor_options={"num_cpus": CONFIG.threads_per_worker},
                  max_ongoing_requests=4 * CONFIG.max_batch_size)
class TomatoLeaf:
    """Multipart `file` in, {"class_name", "probabilities"} out, like our /predict's first prediction."""

    def __init__(self) -> None:
        self.classifier = Classifier(CONFIG)
        self.classifier.warm_up()

    @serve.batch(max_batch_size=CONFIG.max_batch_size, batch_wait_timeout_s=CONFIG.batch_wait_ms / 1000.0)
    async def forward(self, arrays: list) -> list[dict]:
        return self.classifier.predict(arrays)

    async def __call__(self, request: Request) -> dict:
        form = await request.form()
        data = await form["file"].read()
        return await self.forward(self.classifier.preprocess(data))


def shut_down(*_) -> None:
    """SIGTERM from the bench: stop Serve and the local Ray (raylet, GCS, workers) before leaving."""
    serve.shutdown()
    ray.shutdown()
    sys.exit(0)


def main() -> None:
    signal.signal(signal.SIGTERM, shut_down)
    ray.init(num_cpus=CONFIG.thread_budget, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": CONFIG.port})
    serve.run(TomatoLeaf.bind(), name="tomato", route_prefix="/predict")
    while True:  # the driver keeps the app up until the bench stops this process group
        time.sleep(3600)


if __name__ == "__main__":
    main()
