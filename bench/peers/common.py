"""What every peer server shares with ours, so that only the serving framework differs (issue 19).

The peers run in their own venv (`.venv-peers`, bench/requirements-peers.txt) but import this module from the
repository: the same upload decoding (`inference.images.decode_image`: header checks, JPEG draft), the same
transform (`model.transforms.build_transform`), the very ONNX file our server runs (the bundle's cached export,
`inference.export.export_for_serving`), an ONNX Runtime session built by our own `inference.engines.ort_session`
(same options, no spinning), and the same softmax with the bundle's temperature. Thread budget: as many workers
(replicas) as our server has processes, each with cores / workers intra-op threads, exactly like ours.

`write_config` runs on the bench side (product venv); `PeerConfig.load` and `Classifier` run inside the peers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
CONFIG_ENV = "TOMATO_PEER_CONFIG"  # path of the JSON written by `write_config`
MAX_BATCH_SIZE = 8  # flask_server.DEFAULTS["MAX_BATCH_SIZE"]: every peer batches up to the same size
BATCH_WAIT_MS = 2.0  # flask_server.DEFAULTS["BATCH_WAIT_MS"]: and waits as long for a batch to fill


@dataclass(frozen=True)
class PeerConfig:
    """Everything a peer needs to serve exactly our model, on our budget; a JSON file between the two venvs."""

    onnx_path: str
    class_names: list[str]
    temperature: float
    preprocess: dict
    workers: int  # processes / replicas / model instances, as many as our gunicorn workers
    threads_per_worker: int  # ONNX Runtime intra-op threads each, as ours: cores // workers
    port: int
    max_batch_size: int = MAX_BATCH_SIZE
    batch_wait_ms: float = BATCH_WAIT_MS

    @property
    def thread_budget(self) -> int:
        return self.workers * self.threads_per_worker

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "PeerConfig":
        return cls(**json.loads(Path(path or os.environ[CONFIG_ENV]).read_text()))


def our_budget() -> tuple[int, int]:
    """(processes, threads each) of our server with its defaults: gunicorn.conf.py's worker count, cores / workers."""
    from bench.systems import our_worker_count

    workers = our_worker_count([])
    return workers, max(1, (os.cpu_count() or 1) // workers)


def write_config(model: Path, path: Path, port: int) -> PeerConfig:
    """Export (or re-check) the bundle's ONNX graph exactly as our server start does, in a child process (the bench
    process stays lean), and write the peer's config next to it."""
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from inference.bundle import load_bundle\n"
        "from inference.export import export_for_serving\n"
        "onnx = export_for_serving(Path(sys.argv[1]))\n"
        "b = load_bundle(sys.argv[1], device='cpu', warmup=False, backend='eager')\n"
        "print(json.dumps({'onnx_path': str(onnx), 'class_names': b.class_names, 'temperature': b.temperature,\n"
        "                  'preprocess': b.preprocess.to_dict()}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(model)], cwd=ROOT, capture_output=True, text=True,
                          check=True, timeout=600)
    workers, threads = our_budget()
    config = PeerConfig(**json.loads(done.stdout.strip().splitlines()[-1]), workers=workers,
                        threads_per_worker=threads, port=port)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(config), indent=1))
    return config


class Classifier:
    """Our preprocessing and forward, framework-free: bytes -> (3, H, W) float32 array; a batch -> answers."""

    def __init__(self, config: PeerConfig) -> None:
        import torch

        from inference.engines import ort_session
        from model.transforms import PreprocessConfig, build_transform

        torch.set_num_threads(config.threads_per_worker)  # the transform's resize, like ours
        self.config = config
        self.session = ort_session(Path(config.onnx_path), config.threads_per_worker)
        self.transform = build_transform(PreprocessConfig.from_dict(config.preprocess))

    def preprocess(self, data: bytes):
        """Upload bytes -> normalised CHW float32 numpy array (raises inference.images.InvalidImage)."""
        from inference.images import decode_image

        return self.transform(decode_image(data)).numpy()

    def probabilities(self, arrays: list):
        """One forward for the whole batch -> (N, classes) float32 probabilities (softmax at the temperature)."""
        import numpy as np
        import torch

        logits = self.session.run(["logits"], {"images": np.ascontiguousarray(np.stack(arrays))})[0]
        scaled = torch.from_numpy(logits[:, : len(self.config.class_names)]).float() / self.config.temperature
        return torch.softmax(scaled, dim=1).numpy()

    def predict(self, arrays: list) -> list[dict]:
        """One forward for the whole batch; each answer has class_name and every class's probability."""
        names = self.config.class_names
        return [{"class_name": names[max(range(len(row)), key=row.__getitem__)], "probabilities": dict(zip(names, row))}
                for row in self.probabilities(arrays).tolist()]

    def warm_up(self) -> None:
        """Batch sizes 1 and the largest, so the first timed request pays no lazy initialisation."""
        import numpy as np

        side = int(self.config.preprocess["image_size"])
        for size in (1, self.config.max_batch_size):
            self.predict([np.zeros((3, side, side), np.float32)] * size)
