"""The CUDA path: the model on a GPU answers what it answers on the CPU, through the batcher and a live server.

These tests need a CUDA device and are skipped (with that reason) everywhere else; `bench/gpu_check.sh` runs them,
with a short GPU benchmark, on a machine that has one. CI has no GPU, so a green CI run says nothing about them.
"""
from __future__ import annotations

import pytest
import requests
import torch

from support import class_of, sample_files

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: run bench/gpu_check.sh on a GPU"),
]

PROBABILITY_TOLERANCE = 2e-3  # cuDNN picks other convolution algorithms (and TF32) than the CPU: tiny differences


@pytest.fixture(scope="module")
def cuda_bundle(shipped_bundle_path):
    from inference import load_bundle

    return load_bundle(shipped_bundle_path, device="cuda")


@pytest.fixture(scope="module")
def sample_images():
    from inference import decode_image

    return [decode_image(path.read_bytes()) for path in sample_files()]


def test_the_model_loads_on_the_gpu(cuda_bundle):
    assert cuda_bundle.device.type == "cuda"
    assert cuda_bundle.describe()["device"].startswith("cuda")
    assert all(p.device.type == "cuda" for p in cuda_bundle.network.parameters())


def test_predictions_on_the_gpu_equal_the_cpu_ones(cuda_bundle, shipped_bundle, sample_images):
    from inference import predict

    on_gpu, on_cpu = predict(cuda_bundle, sample_images), predict(shipped_bundle, sample_images)
    for gpu, cpu in zip(on_gpu, on_cpu):
        assert gpu.class_name == cpu.class_name and gpu.verdict == cpu.verdict
        assert gpu.probability == pytest.approx(cpu.probability, abs=PROBABILITY_TOLERANCE)
        assert gpu.leaf_score == pytest.approx(cpu.leaf_score, abs=PROBABILITY_TOLERANCE)


def test_the_batcher_runs_batches_on_the_gpu(cuda_bundle, sample_images):
    from inference import MicroBatcher, predict, preprocess

    batch_sizes: list[int] = []
    batcher = MicroBatcher(cuda_bundle, max_batch_size=8, max_wait_ms=50,
                           on_batch=lambda size, seconds: batch_sizes.append(size))
    try:
        futures = batcher.submit_many([preprocess(cuda_bundle, image) for image in sample_images])
        answers = [f.result(timeout=60) for f in futures]
    finally:
        batcher.stop()
    direct = predict(cuda_bundle, sample_images)
    assert [a.prediction.class_name for a in answers] == [d.class_name for d in direct]
    assert max(batch_sizes) > 1  # the images went through in batches, not one by one


def test_a_live_server_reports_the_gpu_and_answers(start_server, shipped_bundle_path):
    server = start_server(shipped_bundle_path, extra_env={"TOMATO_DEVICE": "cuda"}, workers=1)
    ready = requests.get(server.url + "/readyz", timeout=10).json()
    assert ready["model"]["device"].startswith("cuda")
    sample = sample_files()[0]
    answer = requests.post(server.url + "/predict", files={"file": (sample.name, sample.read_bytes(), "image/jpeg")},
                           timeout=30)
    assert answer.status_code == 200
    assert answer.json()["predictions"][0]["class_name"] == class_of(sample)
