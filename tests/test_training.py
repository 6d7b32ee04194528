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
