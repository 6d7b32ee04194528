"""Zero-downtime model swap (serving/swap.py): in-process on the tiny model for the refusals, and a real gunicorn
server on the shipped model under continuous load for "no request fails and every answer names a version"."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import torch
from support import CLASS_NAMES, ROOT, sample_files

from model.bundle import save_bundle
from model.data import DISPLAY_NAMES
from model.network import NetworkConfig, build_network
from model.transforms import PreprocessConfig
from serving import swap


def write_variant(source: Path, target: Path, **changes) -> Path:
    """A copy of a bundle with some of its entries changed (a new version of the same weights, a bad head ...),
    written next to `target` and moved over it, as a deployment would."""
    raw = torch.load(source, map_location="cpu", weights_only=True)
    raw.update(changes)
    staged = target.with_name(f".{target.name}.new")
    torch.save(raw, staged)
    os.replace(staged, target)
    return target


def wrong_head(source: Path, target: Path) -> Path:
    raw = torch.load(source, map_location="cpu", weights_only=True)
    state = dict(raw["state_dict"])
    state["classifier.weight"] = state["classifier.weight"][:-1]
    state["classifier.bias"] = state["classifier.bias"][:-1]
    return write_variant(source, target, state_dict=state)


def corrupt(target: Path) -> Path:
    data = target.read_bytes()
    staged = target.with_name(f".{target.name}.new")
    staged.write_bytes(data[: len(data) // 2])
    os.replace(staged, target)
    return target


# ---- in-process, tiny model: what is refused, and that the old model keeps answering ----

@pytest.fixture
def served_tiny(tiny_bundle_path, tmp_path, make_app):
    path = tmp_path / "current.pt"
    write_variant(tiny_bundle_path, path, version="1.0.0")
    app = make_app(MODEL_PATH=str(path), BACKEND="eager")
    return app, path


def version_of(client) -> str:
    return client.get("/v1/model").get_json()["version"]


def test_swap_serves_the_new_file_and_rollback_is_the_same_operation(served_tiny, tiny_bundle_path):
    app, path = served_tiny
    service, client = app.extensions["tomato"], app.test_client()
    write_variant(tiny_bundle_path, path, version="1.1.0")
    assert swap.swap(service, grace_s=0.1)["state"] == "swapped"
    assert version_of(client) == "1.1.0"
    answer = client.post("/predict", data={"file": (sample_files()[0].open("rb"), "a.jpg")})
    assert answer.status_code == 200 and answer.get_json()["model"]["version"] == "1.1.0"
    assert swap.swap(service, grace_s=0.1)["state"] == "unchanged"
    write_variant(tiny_bundle_path, path, version="1.0.0")
    assert swap.swap(service, grace_s=0.1)["state"] == "swapped" and version_of(client) == "1.0.0"


@pytest.mark.parametrize("damage, words", [
    (lambda source, path: corrupt(path), ""),
    (wrong_head, "classifier head has 9 outputs"),
    (lambda source, path: write_variant(source, path, class_names=CLASS_NAMES[:-1]), "display names"),
])
def test_a_bad_bundle_is_refused_and_the_old_one_keeps_serving(served_tiny, tiny_bundle_path, damage, words):
    app, path = served_tiny
    service, client = app.extensions["tomato"], app.test_client()
    damage(tiny_bundle_path, path)
    outcome = swap.swap(service, grace_s=0.1)
    assert outcome["state"] == "refused" and words in outcome["error"]
    assert version_of(client) == "1.0.0"
    answer = client.post("/predict", data={"file": (sample_files()[0].open("rb"), "a.jpg")})
    assert answer.status_code == 200 and answer.get_json()["model"]["version"] == "1.0.0"


def test_a_bundle_that_fails_the_onnx_check_is_refused(tiny_bundle_path, tmp_path, make_app, monkeypatch):
    path = tmp_path / "current.pt"
    write_variant(tiny_bundle_path, path, version="1.0.0")
    app = make_app(MODEL_PATH=str(path), BACKEND="onnxruntime")
    service = app.extensions["tomato"]
    assert service.bundle.engine.name == "onnxruntime"
    # new weights (a new sha256, so no cached graph) whose export is broken
    torch.manual_seed(7)
    network = build_network(NetworkConfig(num_classes=len(CLASS_NAMES))).eval()
    save_bundle(path, network, CLASS_NAMES, [DISPLAY_NAMES[c] for c in CLASS_NAMES],
                PreprocessConfig(image_size=64, resize_size=64), name="tiny-test-model", version="2.0.0")

    def broken_export(network, target, image_size):
        raise RuntimeError("ONNX export failed")

    monkeypatch.setattr("inference.engines.export_onnx", broken_export)
    outcome = swap.swap(service, grace_s=0.1)
    assert outcome["state"] == "refused" and "ONNX export failed" in outcome["error"]
    assert version_of(app.test_client()) == "1.0.0"


def test_readyz_reports_versions_and_the_last_swap(served_tiny, tiny_bundle_path):
    app, path = served_tiny
    service, client = app.extensions["tomato"], app.test_client()
    corrupt(path)
    service.swapper.start().request()
    deadline = time.monotonic() + 120
    while service.swapper.record["state"] == "initial" and time.monotonic() < deadline:
        time.sleep(0.05)
    models = client.get("/readyz").get_json()["models"]
    assert models["serving"] == [{"version": "1.0.0", "sha256": service.bundle.sha256, "workers": 1}]
    assert models["last_swaps"][0]["state"] == "refused" and models["last_swaps"][0]["error"]


# ---- a real gunicorn server under continuous load ----

class Load:
    """`clients` threads posting leaf photos to /predict and /v2 until stopped; every answer's status and version."""

    def __init__(self, url: str, clients: int, model_name: str) -> None:
        self.url, self.model_name = url, model_name
        self.answers: list[tuple[int, str | None]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._photo = sample_files()[0].read_bytes()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _client(self, index: int) -> None:
        import base64

        session = requests.Session()
        body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                            "data": [base64.b64encode(self._photo).decode()]}]}
        while not self._stop.is_set():
            try:
                if index % 2:
                    answer = session.post(f"{self.url}/v2/models/{self.model_name}/infer", json=body, timeout=60)
                    version = answer.json().get("model_version") if answer.ok else None
                else:
                    answer = session.post(f"{self.url}/predict", files={"file": ("a.jpg", self._photo)}, timeout=60)
                    version = answer.json()["model"]["version"] if answer.ok else None
                self.answers.append((answer.status_code, version))
            except requests.RequestException as exc:
                self.failures.append(repr(exc))

    def wait_for(self, count: int, timeout_s: float = 120.0) -> None:
        target = len(self.answers) + count
        deadline = time.monotonic() + timeout_s
        while len(self.answers) < target and time.monotonic() < deadline:
            time.sleep(0.05)


def run_reload(server) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serving.reload", "--url", server.url, "--timeout", "240"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_swaps_under_load_fail_no_request(start_server, shipped_bundle_path, tmp_path):
    from inference.export import export_for_serving

    path = tmp_path / "current.pt"
    write_variant(shipped_bundle_path, path, version="swap-a")
    new = write_variant(shipped_bundle_path, tmp_path / "new.pt", version="swap-b")
    export_for_serving(new)  # as `make reload` does: the ONNX graph of the new bundle is ready before the swap
    server = start_server(path, workers=2)
    name = requests.get(f"{server.url}/v1/model", timeout=30).json()["name"]
    with Load(server.url, clients=4, model_name=name) as load:
        load.wait_for(10)
        os.replace(new, path)
        swapped = run_reload(server)  # finds the master by its port, HUPs it, waits for both workers
        assert swapped.returncode == 0, swapped.stdout + swapped.stderr + server.log()[-3000:]
        assert "serving swap-b" in swapped.stdout and "in 2 worker(s)" in swapped.stdout
        load.wait_for(10)
        after_swap = len(load.answers)
        wrong_head(shipped_bundle_path, path)
        refused = run_reload(server)
        assert refused.returncode == 1 and "classifier head" in refused.stdout, refused.stdout + refused.stderr
        load.wait_for(10)
    assert not load.failures, load.failures[:3]
    statuses = {status for status, _ in load.answers}
    assert statuses == {200}, [a for a in load.answers if a[0] != 200][:5]
    versions = [version for _, version in load.answers]
    assert set(versions) == {"swap-a", "swap-b"}
    assert set(versions[after_swap:]) == {"swap-b"}  # after the refused swap, the swapped-in model still answers
    ready = requests.get(f"{server.url}/readyz", timeout=30).json()
    assert [m["version"] for m in ready["models"]["serving"]] == ["swap-b"]
    assert " 500 " not in server.log()
