"""The model card's error listing: which test images are wrong, and the contact sheet that shows them."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from model.card import errors_table
from model.evaluate import misclassified, plot_errors
from support import SAMPLES, sample_files

NAMES = ["a", "b", "c"]


def test_misclassified_lists_only_wrong_answers_most_confident_first():
    labels = torch.tensor([0, 1, 2, 0])
    probs = torch.tensor([[0.9, 0.05, 0.05],   # right
                          [0.6, 0.3, 0.1],     # wrong, 0.6 sure
                          [0.1, 0.1, 0.8],     # right
                          [0.05, 0.05, 0.9]])  # wrong, 0.9 sure
    rows = misclassified(["f0", "f1", "f2", "f3"], labels, probs, NAMES)
    assert [r["file"] for r in rows] == ["f3", "f1"]
    assert rows[0] == {"file": "f3", "true": "a", "predicted": "c", "probability": 0.9, "probability_of_true": 0.05}
    assert rows[1]["probability_of_true"] == 0.3


def test_plot_errors_draws_one_tile_per_error(tmp_path: Path):
    files = [p.name for p in sample_files()[:5]]
    errors = [{"file": f, "true": "x", "predicted": "y", "probability": 0.5, "probability_of_true": 0.1} for f in files]
    out = tmp_path / "errors.png"
    plot_errors(errors, SAMPLES, out, columns=4, side=100)
    with Image.open(out) as sheet:
        assert sheet.size == (400, 2 * 130)  # 5 tiles in rows of 4 -> 2 rows of (100 px + caption)
        # the fifth tile (second row, first column) holds a leaf, the sixth stays blank
        assert sheet.crop((2, 160, 98, 228)).convert("L").getextrema() != (255, 255)
        assert sheet.crop((102, 160, 198, 228)).convert("L").getextrema() == (255, 255)


def test_errors_table_has_one_row_per_error():
    ev = {"errors": [{"file": "healthy/x___y.jpg", "true": "healthy", "predicted": "Early_blight",
                      "probability": 0.865, "probability_of_true": 0.025}]}
    lines = errors_table(ev).splitlines()
    assert len(lines) == 3
    assert lines[2] == "| `x___y.jpg` | healthy | Early_blight (0.865) | 0.025 |"


def test_cpu_description_names_the_widest_vector_extension():
    from model.hardware import cpu_description

    avx512 = "model name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx2 avx512f avx512_vnni\n"
    avx2 = "model name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx2\n"
    assert cpu_description(avx512, cores=False) == "AMD EPYC, AVX-512 (VNNI)"
    assert cpu_description(avx2, cores=False) == "AMD EPYC, AVX2"
    assert cpu_description(avx2).startswith("AMD EPYC, ") and " cores, AVX2" in cpu_description(avx2)


def test_the_card_reads_the_deletion_test_from_its_numbers():
    from model.card import explanations_table

    def result(hottest: float, random: float, coldest: float) -> dict:
        areas = {"hottest first": hottest, "random": random, "coldest first": coldest}
        return {"grid": [5, 5], "images": 100, "curves": {k: {"auc": v} for k, v in areas.items()}}

    faithful = explanations_table(result(0.55, 0.67, 0.75))
    unfaithful = explanations_table(result(0.67, 0.668, 0.75), result(0.75, 0.70, 0.72))
    assert "| 100 | 0.550 | 0.670 | 0.750 | +0.120 |" in faithful and "points at what the answer rests on" in faithful
    assert "this one does not" in unfaithful and "coldest cells first is the slowest" in unfaithful
    assert "Grad-CAM" in unfaithful and "-0.050 |" in unfaithful
    assert "not measured" in explanations_table(None)
