"""The reject option: every prediction carries a verdict decided by the bundle's rule, the same on every path."""
from __future__ import annotations

import io
from dataclasses import replace

import pytest
import torch
from PIL import Image, ImageFilter, ImageOps
from support import NOT_LEAF_SAMPLES, class_of, sample_files

from inference import decode_image, load_bundle, predict
from model.bundle import save_bundle
from model.data import DISPLAY_NAMES
from model.network import NetworkConfig, build_network
from model.transforms import PreprocessConfig, build_transform
from model.verdict import LEGACY_RULE, VERDICTS, VerdictRule, decide, image_statistics

CLASSES = sorted(DISPLAY_NAMES)


def _leaf() -> Image.Image:
    return decode_image(sample_files()[0].read_bytes())


def _statistics(image: Image.Image) -> list[float]:
    cfg = PreprocessConfig(image_size=160, resize_size=160)
    return image_statistics(build_transform(cfg)(image)[None], cfg.mean, cfg.std)[0].tolist()


def test_statistics_see_greyscale_darkness_and_blur():
    leaf = _leaf()
    saturation, brightness, sharpness = _statistics(leaf)
    grey = _statistics(ImageOps.grayscale(leaf).convert("RGB"))
    dark = _statistics(leaf.point(lambda v: v // 6))
    blurred = _statistics(leaf.filter(ImageFilter.GaussianBlur(6)))
    assert grey[0] < 0.01 < saturation
    assert dark[1] < brightness / 4
    assert blurred[2] < sharpness / 3


@pytest.mark.parametrize(
    "leaf, top, stats, expected",
    [
        (0.01, 0.99, [0.3, 0.5, 0.05], ("not_tomato_leaf", "not_leaf_like")),
        (0.99, 0.99, [0.001, 0.5, 0.05], ("uncertain", "greyscale")),
        (0.99, 0.99, [0.3, 0.01, 0.05], ("uncertain", "dark")),
        (0.99, 0.99, [0.3, 0.5, 0.0001], ("uncertain", "blurred")),
        (0.6, 0.99, [0.3, 0.5, 0.05], ("uncertain", "unclear_leaf")),
        (0.99, 0.4, [0.3, 0.5, 0.05], ("uncertain", "classes_close")),
        (0.99, 0.99, [0.3, 0.5, 0.05], ("diagnosed", None)),
    ],
)
def test_rule_names_the_first_check_that_fails(leaf, top, stats, expected):
    rule = VerdictRule(leaf_reject=0.5, leaf_accept=0.8, min_probability=0.6, min_saturation=0.02,
                       min_brightness=0.05, min_sharpness=0.001)
    assert decide(rule, leaf, top, stats) == expected


def _bundle_with_rule(path, rule: VerdictRule | None, leaf_head: bool):
    torch.manual_seed(0)
    network = build_network(NetworkConfig(num_classes=len(CLASSES), leaf_head=leaf_head)).eval()
    save_bundle(path, network, CLASSES, [DISPLAY_NAMES[c] for c in CLASSES], PreprocessConfig(64, 64))
    if rule is not None:
        raw = torch.load(path, weights_only=True)
        raw["verdict_rule"] = rule.to_dict()
        torch.save(raw, path)
    return load_bundle(path, device="cpu", backend="eager")


@pytest.mark.parametrize("source", ["energy", "leaf_head"])
def test_thresholds_are_read_from_the_bundle(tmp_path, source):
    leaf = _leaf()
    refuse_all = _bundle_with_rule(tmp_path / "refuse.pt", VerdictRule(source, leaf_reject=1.01, leaf_accept=1.01), True)
    accept_all = _bundle_with_rule(tmp_path / "accept.pt", VerdictRule(source, leaf_reject=0.0, leaf_accept=0.0,
                                                                         min_probability=0.0), True)
    assert predict(refuse_all, [leaf])[0].verdict == "not_tomato_leaf"
    assert predict(accept_all, [leaf])[0].verdict == "diagnosed"
    assert refuse_all.verdict_rule.leaf_reject == 1.01


def test_the_energy_leaf_score_follows_the_stored_map(tmp_path):
    """leaf_score = sigmoid(scale * logsumexp(disease logits) + shift), with scale and shift from the bundle."""
    leaf = _leaf()
    rule = VerdictRule("energy", energy_scale=0.5, energy_shift=-1.0, leaf_reject=0.0, leaf_accept=0.0)
    bundle = _bundle_with_rule(tmp_path / "energy.pt", rule, True)
    logits = bundle.engine(bundle.transform(leaf)[None])[:, : len(CLASSES)]
    expected = torch.sigmoid(0.5 * torch.logsumexp(logits, 1) - 1.0).item()
    assert predict(bundle, [leaf])[0].leaf_score == pytest.approx(expected, abs=1e-5)


def test_the_combined_leaf_score_adds_the_leaf_head_logit_with_its_stored_weight(tmp_path):
    """From 2.2.0: leaf_score = sigmoid(scale * logsumexp(disease logits) + weight * leaf logit + shift)."""
    leaf = _leaf()
    rule = VerdictRule("energy_and_leaf_head", energy_scale=0.5, energy_shift=-1.0, leaf_head_weight=0.7,
                       leaf_reject=0.0, leaf_accept=0.0)
    bundle = _bundle_with_rule(tmp_path / "combined.pt", rule, True)
    outputs = bundle.engine(bundle.transform(leaf)[None])
    logits, leaf_logit = outputs[:, : len(CLASSES)], outputs[:, len(CLASSES)]
    expected = torch.sigmoid(0.5 * torch.logsumexp(logits, 1) + 0.7 * leaf_logit - 1.0).item()
    assert predict(bundle, [leaf])[0].leaf_score == pytest.approx(expected, abs=1e-5)
    energy_only = _bundle_with_rule(tmp_path / "energy.pt", replace(rule, leaf_source="energy"), True)
    assert predict(energy_only, [leaf])[0].leaf_score != pytest.approx(expected, abs=1e-5)  # the weight counts


def test_a_bundle_without_leaf_head_or_rule_gets_the_documented_default(tmp_path):
    bundle = _bundle_with_rule(tmp_path / "old.pt", None, False)
    assert bundle.verdict_rule == LEGACY_RULE
    prediction = predict(bundle, [_leaf()])[0]
    assert prediction.verdict in VERDICTS and prediction.verdict != "not_tomato_leaf"
    assert prediction.leaf_score == pytest.approx(prediction.probability)  # 1.x: the top-1 probability


def test_every_sample_leaf_is_diagnosed_and_right(shipped_bundle):
    files = sample_files()
    predictions = predict(shipped_bundle, [decode_image(p.read_bytes()) for p in files])
    wrong = [(p.name, r.verdict, r.verdict_reason, r.class_name) for p, r in zip(files, predictions)
             if r.verdict != "diagnosed" or r.class_name != class_of(p)]
    assert not wrong
    assert all(0.0 <= r.leaf_score <= 1.0 for r in predictions)


def test_shipped_model_says_when_a_photo_is_not_a_tomato_leaf(shipped_bundle):
    assert shipped_bundle.verdict_rule.leaf_source == "energy_and_leaf_head"
    predictions = predict(shipped_bundle, [decode_image(p.read_bytes()) for p in NOT_LEAF_SAMPLES])
    assert [p.verdict for p in predictions] == ["not_tomato_leaf"] * len(NOT_LEAF_SAMPLES)
    assert all(p.leaf_score < shipped_bundle.verdict_rule.leaf_reject for p in predictions)


def test_a_greyscale_leaf_is_never_diagnosed_by_the_shipped_model(shipped_bundle):
    grey = ImageOps.grayscale(_leaf()).convert("RGB")
    buffer = io.BytesIO()
    grey.save(buffer, "JPEG")
    prediction = predict(shipped_bundle, [decode_image(buffer.getvalue())])[0]
    assert (prediction.verdict, prediction.verdict_reason) == ("uncertain", "greyscale")
