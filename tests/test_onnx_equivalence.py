"""The shipped model exported to ONNX gives the same probabilities in ONNX Runtime as eager PyTorch.

bench/ceiling_variants.py measured ONNX Runtime as a faster CPU forward; this test is the evidence a switch
would need: same export code, every sample image in one batch (and a batch of one), atol 1e-4 on the
calibrated probabilities and the same top class.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from support import sample_files  # noqa: E402

from bench.ceiling_variants import export_onnx, ort_session  # noqa: E402
from inference import decode_image  # noqa: E402
from inference.predict import forward, preprocess  # noqa: E402


@pytest.fixture(scope="module")
def onnx_session(shipped_bundle, tmp_path_factory):
    import copy

    network = copy.deepcopy(shipped_bundle.network).to(memory_format=torch.contiguous_format)
    path = export_onnx(network, tmp_path_factory.mktemp("onnx") / "model.onnx", shipped_bundle.preprocess.image_size)
    return ort_session(path, threads=2)


def onnx_probabilities(session, bundle, batch: torch.Tensor) -> torch.Tensor:
    logits = torch.from_numpy(session.run(["logits"], {"images": batch.contiguous().numpy()})[0])
    return torch.softmax(logits.float() / bundle.temperature, dim=1)


@pytest.mark.parametrize("batch_size", [1, "all"])
def test_onnx_runtime_matches_eager(shipped_bundle, onnx_session, batch_size):
    files = sample_files() if batch_size == "all" else sample_files()[:1]
    batch = torch.stack([preprocess(shipped_bundle, decode_image(f.read_bytes())) for f in files])
    eager = forward(shipped_bundle, batch)
    onnx = onnx_probabilities(onnx_session, shipped_bundle, batch)
    assert onnx.shape == eager.shape
    torch.testing.assert_close(onnx, eager, atol=1e-4, rtol=0)
    assert onnx.argmax(1).tolist() == eager.argmax(1).tolist()
