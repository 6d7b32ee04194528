"""Class-activation-map explanations (inference/explain.py): the API's `?explain=true`, the engines' second output,
the map's arithmetic on the shipped network, and the batch scorer's overlays."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image
from support import sample_files

from inference import decode_image, load_bundle, predict, preprocess
from inference.batcher import MicroBatcher
from inference.explain import class_activation_maps, class_weights, forward_with_features


def post(client, files: list[bytes], query: str = ""):
    return client.post(f"/predict{query}", data={"file": [(io.BytesIO(f), f"{i}.jpg") for i, f in enumerate(files)]})


def test_explain_adds_a_map_and_an_overlay_per_image(client):
    files = [p.read_bytes() for p in sample_files()[:2]]
    answer = post(client, files, "?explain=true")
    assert answer.status_code == 200
    for prediction in answer.get_json()["predictions"]:
        explanation = prediction["explanation"]
        assert explanation["class_name"] == prediction["class_name"]
        assert explanation["shape"] == [2, 2]  # 64 px tiny model: stride 32
        grid = np.array(explanation["grid"])
        # scaled to a maximum of 1; all zeros when nothing speaks for the class (a random tiny network can do that)
        assert grid.shape == (2, 2) and grid.min() >= 0 and grid.max() in (0.0, 1.0)
        overlay = Image.open(io.BytesIO(base64.b64decode(explanation["overlay_png"])))
        assert overlay.format == "PNG" and overlay.size == (64, 64)


def test_without_explain_the_answer_is_unchanged(client, leaf_bytes):
    plain = post(client, [leaf_bytes]).get_json()["predictions"][0]
    explicit = post(client, [leaf_bytes], "?explain=false").get_json()["predictions"][0]
    explained = post(client, [leaf_bytes], "?explain=true").get_json()["predictions"][0]
    assert "explanation" not in plain and "explanation" not in explicit
    assert explained["probabilities"] == pytest.approx(plain["probabilities"], abs=1e-6)


@pytest.mark.parametrize("value", ["yes", "1", "TRUE", ""])
def test_explain_takes_only_true_or_false(client, leaf_bytes, value):
    answer = post(client, [leaf_bytes], f"?explain={value}")
    assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "bad_parameter"


def test_a_batch_mixing_explained_and_plain_requests(tiny_bundle_path, leaf_bytes):
    bundle = load_bundle(tiny_bundle_path, device="cpu", backend="eager")
    batcher = MicroBatcher(bundle, max_batch_size=4, max_wait_ms=50)
    try:
        tensor = preprocess(bundle, decode_image(leaf_bytes))
        with batcher.incoming(2) as announcement:
            plain = batcher.submit_many([tensor], 3)
            explained = batcher.submit_many([tensor], 3, announcement, explain=True)
        plain_result, explained_result = plain[0].result(30), explained[0].result(30)
    finally:
        batcher.stop()
    assert plain_result.cam is None and explained_result.cam is not None
    assert plain_result.prediction.probabilities == pytest.approx(explained_result.prediction.probabilities)


def test_the_map_is_what_the_head_averages(shipped_bundle, leaf_bytes):
    """GAP -> linear: each class logit is the spatial mean of its unnormalised map plus the bias. A retrained bundle
    with another head layout would break the premise of CAM, and this test."""
    network = shipped_bundle.network
    batch = preprocess(shipped_bundle, decode_image(leaf_bytes))[None]
    with torch.inference_mode():
        outputs, features = forward_with_features(network, batch.contiguous(memory_format=torch.channels_last))
        reference = network(batch.contiguous(memory_format=torch.channels_last))
    classes = len(shipped_bundle.class_names)
    raw_maps = torch.einsum("kc,nchw->nkhw", class_weights(network), features)
    logits = raw_maps.mean((2, 3)) + network.classifier.bias
    assert torch.allclose(logits, outputs[:, :classes], atol=1e-4)
    assert torch.allclose(outputs, reference, atol=1e-5)


def test_onnx_and_eager_give_the_same_map(shipped_bundle, leaf_bytes):
    assert shipped_bundle.engine.name == "onnxruntime"
    batch = preprocess(shipped_bundle, decode_image(leaf_bytes))[None]
    logits, features = shipped_bundle.engine.explain(batch)
    with torch.inference_mode():
        _, eager_features = forward_with_features(shipped_bundle.network, batch)
    top = logits[:, :len(shipped_bundle.class_names)].argmax(1)
    weights = class_weights(shipped_bundle.network)
    assert torch.allclose(class_activation_maps(features, weights, top),
                          class_activation_maps(eager_features, weights, top), atol=1e-3)
    assert features.shape[-2:] == (shipped_bundle.preprocess.image_size // 32,) * 2


def test_predict_with_explain_on_the_shipped_model(shipped_bundle):
    images = [decode_image(p.read_bytes()) for p in sample_files()[:3]]
    explained = predict(shipped_bundle, images, explain=True)
    plain = predict(shipped_bundle, images)
    for e, p in zip(explained, plain):
        assert e.class_name == p.class_name and p.explanation is None
        assert e.explanation["shape"] == [5, 5] and max(max(row) for row in e.explanation["grid"]) == 1.0


def test_batch_scorer_writes_overlays(tiny_bundle_path, tmp_path):
    from inference.batch import score_folder

    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sample_files()[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not an image")
    counts = score_folder(folder, tmp_path / "out.csv", tiny_bundle_path, explain_dir=tmp_path / "overlays")
    written = sorted(p.name for p in (tmp_path / "overlays").iterdir())
    assert counts["ok"] == 2 and written == sorted(f"{p.stem}.png" for p in sample_files()[:2])
    assert Image.open(tmp_path / "overlays" / written[0]).format == "PNG"


def test_overlay_png_is_a_lossless_png():
    from inference.explain import rgb_png

    noise = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    smooth = np.broadcast_to(np.linspace(0, 255, 53, dtype=np.uint8)[None, :, None], (37, 53, 3))
    for pixels in (noise, smooth):  # the Up filter's wrap-around and its runs of zeros
        _assert_round_trip(rgb_png, pixels)
    assert len(rgb_png(smooth)) < smooth.size // 4  # a smooth image is really compressed, not stored


def test_overlay_is_the_upsampled_heat_blended_over_the_photo():
    """Checked against a plain per-pixel reference: F.interpolate, the ramp from its formula, an (H, W, 3) blend."""
    from torch.nn import functional as F

    from inference.explain import OVERLAY_ALPHA, overlay_png

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    photo = torch.rand(3, 64, 96) * 0.2 + 0.4  # a mid-grey photo with noise, so the heat's colour shows
    tensor = (photo - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    cam = torch.zeros(2, 3)
    cam[0, 0] = 1.0  # hot in the top-left cell only
    overlay = np.asarray(Image.open(io.BytesIO(overlay_png(tensor, cam, mean, std)))).astype(int)
    heat = F.interpolate(cam[None, None], size=(64, 96), mode="bilinear", align_corners=False)[0, 0]
    steps = (heat.clamp(0, 1) * 255).round() * 4 / 255
    ramp = (1.5 - (steps[..., None] - torch.tensor([3.0, 2.0, 1.0])).abs()).clamp(0, 1).mul(255).round()
    expected = (photo.permute(1, 2, 0) * 255 * (1 - OVERLAY_ALPHA) + ramp * OVERLAY_ALPHA).round().numpy()
    assert overlay.shape == (64, 96, 3) and np.abs(overlay - expected).max() <= 1
    assert overlay[0, 0, 0] > overlay[0, 0, 2] + 20  # hot corner: red over blue
    assert overlay[-1, -1, 2] > overlay[-1, -1, 0] + 20  # cold corner: blue over red


def _assert_round_trip(rgb_png, pixels: np.ndarray) -> None:
    for level in (0, 1, 3):
        decoded = Image.open(io.BytesIO(rgb_png(pixels, level)))
        assert decoded.mode == "RGB" and (np.asarray(decoded) == pixels).all()


def test_the_deletion_test_hides_exactly_the_listed_cells_with_the_chosen_fill():
    from bench.explain_faithfulness import fill_for, hide

    batch = torch.rand(2, 3, 160, 160) * 2 - 1
    for fill in ("blur", "grey"):
        filler = fill_for(batch, fill)
        hidden = hide(batch, [[0, 24], []], (5, 5), filler)
        assert torch.equal(hidden[1], batch[1])  # nothing listed, nothing hidden
        assert torch.equal(hidden[0, :, :32, :32], filler[0, :, :32, :32])  # cell 0: top-left
        assert torch.equal(hidden[0, :, 128:, 128:], filler[0, :, 128:, 128:])  # cell 24: bottom-right
        assert torch.equal(hidden[0, :, 32:128, :], batch[0, :, 32:128, :])  # the rest untouched
    assert fill_for(batch, "blur").std() < batch.std() / 2  # blur takes the fine detail away
