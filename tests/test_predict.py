"""The shipped model, loaded the way the server loads it: right answers, consistent batching, safe loading."""
from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch
from PIL import Image
from support import SHIPPED_BUNDLE, class_of, encode, sample_files

from inference import decode_image, load_bundle, predict
from model.bundle import network_from_bundle, read_bundle, save_bundle
from model.network import NetworkConfig, build_network
from model.transforms import PreprocessConfig


@pytest.fixture(scope="module")
def samples() -> list[tuple[str, Image.Image]]:
    return [(class_of(p), decode_image(p.read_bytes())) for p in sample_files()]


def test_shipped_bundle_loads_with_the_safe_loader():
    raw = torch.load(SHIPPED_BUNDLE, map_location="cpu", weights_only=True)
    for key in ("state_dict", "arch", "class_names", "display_names", "preprocess", "temperature", "metrics", "provenance"):
        assert key in raw, key
    assert len(raw["class_names"]) == 10
    assert raw["temperature"] > 0
    assert SHIPPED_BUNDLE.stat().st_size < 20e6


def test_reported_sha256_is_that_of_the_file_loaded(shipped_bundle):
    assert shipped_bundle.sha256 == hashlib.sha256(SHIPPED_BUNDLE.read_bytes()).hexdigest()


def test_shipped_model_classifies_every_sample(shipped_bundle, samples):
    assert len(samples) == 20
    predictions = predict(shipped_bundle, [img for _, img in samples])
    wrong = [(label, p.class_name, round(p.probability, 3)) for (label, _), p in zip(samples, predictions) if p.class_name != label]
    assert not wrong, f"misclassified samples: {wrong}"


def test_probabilities_are_a_distribution(shipped_bundle, samples):
    for prediction in predict(shipped_bundle, [img for _, img in samples[:4]], top_k=10):
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert [s.class_name for s in prediction.top_k][0] == prediction.class_name
        probs = [s.probability for s in prediction.top_k]
        assert probs == sorted(probs, reverse=True) and len(probs) == 10


def test_batch_equals_one_by_one(shipped_bundle, samples):
    images = [img for _, img in samples[:8]]
    batched = predict(shipped_bundle, images, top_k=10)
    for image, together in zip(images, batched):
        alone = predict(shipped_bundle, [image], top_k=10)[0]
        assert alone.class_name == together.class_name
        for name, p in alone.probabilities.items():
            assert together.probabilities[name] == pytest.approx(p, abs=1e-4)


def _as_mode(image: Image.Image, mode: str) -> bytes:
    if mode.startswith("I;16"):  # 16-bit grey, as scientific cameras and scanners write it; 8 -> 16 bit is
        factor = 256 if mode == "I;16 x256" else 257  # v * 257 (full range) or v * 256 (a bit shift)
        return encode(image.convert("L").point(lambda v: v * factor, "I").convert("I;16"), "PNG")
    return encode(image.convert(mode), "TIFF" if mode == "CMYK" else "PNG")


@pytest.mark.parametrize("mode", ["P", "RGBA", "CMYK"])
def test_colour_modes_classify_like_the_original(shipped_bundle, samples, mode):
    images = [img for _, img in samples]
    expected = [p.class_name for p in predict(shipped_bundle, images)]
    converted = [decode_image(_as_mode(img, mode)) for img in images]
    assert [p.class_name for p in predict(shipped_bundle, converted)] == expected


def test_grey_modes_decode_to_the_same_picture(shipped_bundle, samples):
    """L, LA and 16-bit grey files (both usual 8 -> 16 bit expansions) of one leaf reach the network as one image.

    (Colour is part of the diagnosis, so a grey photo may be classed differently from the colour
    original; see the model card. What decoding owes us is that the grey encodings agree.)
    """
    images = [img for _, img in samples]
    by_mode = {m: predict(shipped_bundle, [decode_image(_as_mode(img, m)) for img in images], top_k=10)
               for m in ("L", "LA", "I;16", "I;16 x256")}
    for mode in ("LA", "I;16", "I;16 x256"):
        for grey, other in zip(by_mode["L"], by_mode[mode]):
            assert other.class_name == grey.class_name
            for name, p in grey.probabilities.items():
                assert other.probabilities[name] == pytest.approx(p, abs=0.02)


@pytest.mark.parametrize("orientation, undo", [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90),
                                               (8, Image.Transpose.ROTATE_270)])
def test_exif_rotated_files_classify_like_the_original(shipped_bundle, samples, orientation, undo):
    """A phone stores pixels sideways plus an EXIF tag; after decode_image the leaf is upright again."""
    label, image = samples[0]
    stored = image.transpose(undo)  # the sensor's pixel layout for that orientation tag
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = decode_image(encode(stored, "JPEG", quality=95, exif=exif.tobytes()))
    assert decoded.size == image.size
    assert predict(shipped_bundle, [decoded])[0].class_name == label


def test_mismatched_head_is_refused(tmp_path):
    network = build_network(NetworkConfig(num_classes=7))
    path = tmp_path / "bad.pt"
    save_bundle(path, network, [f"c{i}" for i in range(10)], [f"C{i}" for i in range(10)], PreprocessConfig())
    with pytest.raises(ValueError, match="7 outputs but the bundle lists 10 classes"):
        network_from_bundle(read_bundle(path))
    with pytest.raises(ValueError):
        load_bundle(path, device="cpu")


def test_bundle_without_required_keys_is_refused(tmp_path):
    path = tmp_path / "partial.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a model bundle"):
        read_bundle(path)


def test_missing_bundle_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model bundle not found"):
        load_bundle(tmp_path / "nope.pt")


def test_prediction_dict_has_every_field(shipped_bundle, samples):
    prediction = predict(shipped_bundle, [samples[0][1]], top_k=3)[0]
    expected = dataclasses.asdict(prediction)
    assert expected.pop("explanation") is None  # only in answers that asked for it (?explain=true)
    assert prediction.to_dict() == expected  # the hand-built dict must not drop a field
    explained = predict(shipped_bundle, [samples[0][1]], top_k=3, explain=True)[0]
    assert explained.to_dict() == dataclasses.asdict(explained)
