"""Data split and training plumbing (tiny runs; skipped with a reason when the training data is absent)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from support import DATA_ROOT, ROOT

from model.data import read_manifest, read_split, split_of
from model.network import NetworkConfig, build_network, load_pretrained_backbone

needs_data = pytest.mark.skipif(not (DATA_ROOT / "manifest.csv").exists(),
                                reason=f"training data not found at {DATA_ROOT} (see ../shared/data/README.md)")


def test_split_is_deterministic_and_by_leaf_group():
    assert split_of("Early_blight/RS_Erly.B_7567") == split_of("Early_blight/RS_Erly.B_7567")
    buckets = [split_of(f"group-{i}") for i in range(5000)]
    share = {s: buckets.count(s) / len(buckets) for s in ("train", "val", "test")}
    assert 0.76 < share["train"] < 0.84 and 0.08 < share["val"] < 0.12 and 0.08 < share["test"] < 0.12


@needs_data
def test_no_leaf_group_crosses_splits():
    samples = read_manifest(DATA_ROOT)
    split_by_group: dict[str, set[str]] = {}
    for s in samples:
        split_by_group.setdefault(s.leaf_group, set()).add(s.split)
    assert all(len(splits) == 1 for splits in split_by_group.values())
    for cls in {s.class_name for s in samples}:  # every class appears in every split
        assert {s.split for s in samples if s.class_name == cls} == {"train", "val", "test"}


def test_pretrained_backbone_maps_onto_our_network():
    network = build_network(NetworkConfig(num_classes=10))
    before = network.stem[0].weight.clone()
    assert load_pretrained_backbone(network) == 245
    assert not torch.equal(before, network.stem[0].weight)


@needs_data
def test_training_runs_writes_split_and_bundle_and_resumes(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "model.train", "--data", str(DATA_ROOT), "--out", str(out), "--limit", "48",
               "--image-size", "64", "--batch-size", "16", "--workers", "0"]
    first = subprocess.run(command + ["--epochs", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (out / "bundle.pt").exists() and (out / "checkpoint.pt").exists()
    split = read_split(out / "split.csv")
    assert len(split) == len(read_manifest(DATA_ROOT))
    second = subprocess.run(command + ["--epochs", "2", "--version", "2.0.0-rc1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed after epoch 1" in second.stdout
    raw = torch.load(out / "bundle.pt", weights_only=True)
    assert [h["epoch"] for h in raw["metrics"]["history"]] == [1, 2]
    assert raw["preprocess"]["image_size"] == 64 and len(raw["class_names"]) == 10
    assert raw["version"] == "2.0.0-rc1"


@needs_data
def test_init_from_a_bundle_with_other_classes_is_refused(tmp_path):
    from model.bundle import save_bundle
    from model.transforms import PreprocessConfig

    other = tmp_path / "other.pt"
    names = [f"plant_{i}" for i in range(10)]
    save_bundle(other, build_network(NetworkConfig(num_classes=10)), names, names, PreprocessConfig(64, 64))
    result = subprocess.run([sys.executable, "-m", "model.train", "--data", str(DATA_ROOT), "--out", str(tmp_path / "run"),
                             "--limit", "16", "--epochs", "1", "--image-size", "64", "--workers", "0",
                             "--init-from", str(other)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "was trained on classes" in result.stderr


NEGATIVES_ROOT = DATA_ROOT.parent / "not_tomato_leaf"
needs_negatives = pytest.mark.skipif(not (NEGATIVES_ROOT / "manifest.csv").exists(),
                                     reason=f"not-a-tomato-leaf images not found at {NEGATIVES_ROOT}")


@needs_negatives
def test_negatives_are_split_by_kind_and_held_out_kinds_never_train():
    from model.negatives import read_negatives

    negatives = read_negatives(NEGATIVES_ROOT)
    held_out = {n.category for n in negatives if n.split == "heldout"}
    trained = {n.category for n in negatives if n.split == "train"}
    assert not held_out & trained
    assert {"strawberry__healthy", "strawberry__leaf_scorch", "pepper_bell__bacterial_spot"} <= held_out
    photo_categories = {n.category for n in negatives if n.kind == "photo"}
    assert 0.15 < len(held_out & photo_categories) / len(photo_categories) < 0.35


def test_synthetic_negatives_are_reproducible_and_serving_sized():
    from model.negatives import TEST_SYNTHETIC, synthetic_negatives

    for kind in TEST_SYNTHETIC:
        first, again = synthetic_negatives(kind, 3, seed=7), synthetic_negatives(kind, 3, seed=7)
        assert first.shape == (3, 3, 256, 256) and first.dtype == torch.uint8
        assert torch.equal(first, again)
        assert not torch.equal(first, synthetic_negatives(kind, 3, seed=8))


def test_leaf_mosaic_keeps_the_leaf_pixels_but_not_the_leaf():
    from model.negatives import synthetic_negatives

    yy, xx = torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij")
    leaf = ((yy - 128) ** 2 + (xx - 128) ** 2 < 90 ** 2).to(torch.uint8)  # a green disc on grey: one "leaf"
    photo = torch.stack([100 - 60 * leaf, 100 + 80 * leaf, 100 - 60 * leaf]).to(torch.uint8)[None]
    mosaics = synthetic_negatives("leaf_mosaic", 4, seed=3, leaves=photo)
    assert mosaics.shape == (4, 3, 256, 256)
    green = (mosaics[:, 1].float() > 140).float().mean().item()
    assert abs(green - leaf.float().mean().item()) < 0.05  # about the same amount of leaf colour
    centre = mosaics[:, 1, 96:160, 96:160].float().gt(140).float().mean(dim=(1, 2))
    assert (centre < 0.99).any()  # but the disc is no longer whole in the middle


def test_energy_map_stays_inside_zero_and_one_when_the_groups_separate_completely():
    from model.reject import fit_energy_map

    tomato, other = torch.linspace(10, 14, 200), torch.linspace(-4, 2, 200)  # no overlap at all
    scale, shift = fit_energy_map(tomato, other)
    leaf = torch.sigmoid(scale * torch.cat([tomato, other]) + shift)
    assert scale > 0
    assert leaf[:200].min() > 0.5 > leaf[200:].max()
    assert leaf.max() < 1.0 and leaf.min() > 0.0  # a plain logistic fit would round every score to 0 or 1
    assert len(leaf[:200].unique()) > 100  # so tomato photos still differ and a quantile can sit between them


def test_energy_margin_pushes_tomato_energy_up_and_negative_energy_down_only_past_the_margins():
    from model.train import NEGATIVE, EnergyMargin, training_loss

    margin = EnergyMargin(weight=0.1, tomato_at_least=5.0, negative_at_most=2.0)
    logits = torch.zeros(2, 10, requires_grad=True)  # energy log(10) = 2.30 for both rows
    loss = margin(logits, torch.tensor([True, False]))
    loss.backward()
    assert loss.item() > 0
    assert (logits.grad[0] < 0).all() and (logits.grad[1] > 0).all()  # descent raises row 0's energy, lowers row 1's
    settled = torch.tensor([[9.0] + [0.0] * 9, [-3.0] * 10])  # energies above 5 and below 2: nothing to push
    assert margin(settled, torch.tensor([True, False])).item() == 0.0
    outputs = torch.cat([settled, torch.zeros(2, 1)], dim=1)  # with the leaf logit column
    labels = torch.tensor([0, NEGATIVE])
    criterion = torch.nn.CrossEntropyLoss()
    assert torch.isclose(training_loss(outputs, labels, criterion, True, 1.0, 0.5, margin),
                         training_loss(outputs, labels, criterion, True, 1.0, 0.5))


def test_leaf_map_combines_two_scores_and_uses_the_one_that_separates():
    from model.reject import fit_leaf_map

    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(400, generator=generator)
    tomato = torch.stack([noise[:200], torch.linspace(2, 6, 200)], 1)  # column 0: noise; column 1: separates
    other = torch.stack([noise[200:], torch.linspace(-6, 1, 200)], 1)
    weights, shift = fit_leaf_map(tomato, other)
    leaf = torch.sigmoid(torch.cat([tomato, other]).double() @ torch.tensor(weights, dtype=torch.double) + shift)
    assert weights[1] > 0 and abs(weights[0]) < weights[1] / 5
    assert leaf[:200].min() > 0.5 > leaf[200:].max() and 0 < leaf.min() and leaf.max() < 1


def test_auroc_is_the_probability_of_ranking_a_positive_first():
    from model.reject import auroc

    assert auroc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 0.0
    assert auroc(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0])) == 0.5


@needs_data
@needs_negatives
def test_training_with_negatives_adds_a_leaf_head_and_reject_stores_a_rule(tmp_path, tiny_bundle_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "model.train", "--data", str(DATA_ROOT), "--out", str(out), "--limit", "32",
               "--image-size", "64", "--batch-size", "16", "--workers", "0", "--epochs", "1", "--negatives",
               str(NEGATIVES_ROOT), "--synthetic-per-kind", "4", "--init-from", str(tiny_bundle_path),
               "--freeze-blocks", "4"]
    trained = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    raw = torch.load(out / "bundle.pt", weights_only=True)
    assert raw["arch"]["leaf_head"] is True and raw["state_dict"]["leaf_classifier.weight"].shape == (1, 1280)
    frozen = torch.load(tiny_bundle_path, weights_only=True)["state_dict"]["stem.0.weight"]
    assert torch.equal(raw["state_dict"]["stem.0.weight"], frozen)  # --freeze-blocks kept the stem
    assert (out / "negatives_split.csv").exists()
    reject = subprocess.run([sys.executable, "-m", "model.reject", "--model", str(out / "bundle.pt"), "--data",
                             str(DATA_ROOT), "--split", str(out / "split.csv"), "--negatives", str(NEGATIVES_ROOT),
                             "--negatives-split", str(out / "negatives_split.csv"), "--out", str(tmp_path / "reject"),
                             "--limit", "12", "--store"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert reject.returncode == 0, reject.stderr[-3000:]
    rule = torch.load(out / "bundle.pt", weights_only=True)["verdict_rule"]
    assert rule["leaf_source"] == "energy_and_leaf_head" and 0 <= rule["leaf_reject"] <= rule["leaf_accept"] <= 1
    assert (tmp_path / "reject" / "roc_curves.png").exists()
