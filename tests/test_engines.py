"""The serving engine: ONNX Runtime gives eager PyTorch's answers, its cached export is reused when sound and
rebuilt when not, and the backend choice is explicit."""
from __future__ import annotations

import pytest
import torch
from support import class_of, sample_files

from inference import decode_image, load_bundle
from inference.engines import build_engine, cached_onnx_path, check_agrees, export_onnx
from inference.predict import forward, preprocess
from model.network import NetworkConfig, build_network


@pytest.fixture(scope="module")
def eager_bundle(shipped_bundle_path):
    return load_bundle(shipped_bundle_path, device="cpu", backend="eager")


def test_cpu_default_is_onnx_runtime(shipped_bundle):
    assert shipped_bundle.engine.name == "onnxruntime"
    assert shipped_bundle.describe()["backend"] == "onnxruntime"


@pytest.mark.parametrize("batch_size", [1, "all"])
def test_onnx_runtime_matches_eager_on_the_samples(shipped_bundle, eager_bundle, batch_size):
    files = sample_files() if batch_size == "all" else sample_files()[:1]
    batch = torch.stack([preprocess(eager_bundle, decode_image(f.read_bytes())) for f in files])
    served = forward(shipped_bundle, batch)
    reference = forward(eager_bundle, batch)
    torch.testing.assert_close(served.probabilities, reference.probabilities, atol=1e-4, rtol=0)
    torch.testing.assert_close(served.leaf_scores, reference.leaf_scores, atol=1e-4, rtol=0)
    top = [shipped_bundle.class_names[i] for i in served.probabilities.argmax(1).tolist()]
    assert top == [class_of(f) for f in files]


def test_cached_export_is_reused(tiny_bundle_path, tmp_path):
    first = load_bundle(tiny_bundle_path, device="cpu", backend="onnxruntime", cache_dir=tmp_path)
    path = cached_onnx_path(tmp_path, first.sha256, first.preprocess.image_size)
    assert path.is_file()
    stamp = path.stat().st_mtime_ns
    load_bundle(tiny_bundle_path, device="cpu", backend="onnxruntime", cache_dir=tmp_path)
    assert path.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no leftovers from the atomic write


def test_damaged_cache_file_is_rebuilt(tiny_bundle_path, tmp_path):
    sha = load_bundle(tiny_bundle_path, device="cpu", backend="eager").sha256
    path = cached_onnx_path(tmp_path, sha, 64)
    path.write_bytes(b"not an onnx model")
    bundle = load_bundle(tiny_bundle_path, device="cpu", backend="onnxruntime", cache_dir=tmp_path)
    assert bundle.engine.name == "onnxruntime"
    assert path.stat().st_size > 100_000
    check_agrees(bundle.engine, bundle.network, 64)


def test_cache_file_of_another_model_is_not_trusted(tiny_bundle_path, tmp_path):
    bundle = load_bundle(tiny_bundle_path, device="cpu", backend="onnxruntime", cache_dir=tmp_path)
    torch.manual_seed(99)  # the same architecture with other weights: the file of another model
    other = build_network(NetworkConfig(num_classes=len(bundle.class_names))).eval()
    with pytest.raises(RuntimeError, match="disagrees with eager"):
        check_agrees(bundle.engine, other, 64)
    # the same check guards the cache: a file exported from different weights is replaced
    path = cached_onnx_path(tmp_path, bundle.sha256, 64)
    impostor = tmp_path / "impostor"
    impostor.mkdir()
    export_onnx(other, impostor / "x.onnx", 64).replace(path)
    rebuilt = build_engine("onnxruntime", bundle.network, torch.device("cpu"), bundle.sha256, 64, 1, tmp_path)
    check_agrees(rebuilt, bundle.network, 64)


def test_unwritable_cache_still_serves(tiny_bundle_path, tmp_path):
    blocked = tmp_path / "a-file-not-a-folder"
    blocked.write_text("")
    bundle = load_bundle(tiny_bundle_path, device="cpu", backend="onnxruntime", cache_dir=blocked / "cache")
    assert bundle.engine.name == "onnxruntime"
    check_agrees(bundle.engine, bundle.network, 64)


def test_backend_choices(tiny_bundle_path):
    assert load_bundle(tiny_bundle_path, device="cpu", backend="eager").describe()["backend"] == "eager"
    with pytest.raises(ValueError, match="unknown backend"):
        load_bundle(tiny_bundle_path, device="cpu", backend="tensorrt")
