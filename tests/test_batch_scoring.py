"""`python -m inference.batch`: one CSV row per file, bad files included, never stopping on one."""
from __future__ import annotations

import csv
import shutil
import subprocess
import sys

from support import NOT_LEAF_SAMPLES, ROOT, class_of, sample_files


def test_bulk_scorer_writes_a_row_per_file_including_bad_ones(tmp_path, shipped_bundle_path):
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    good = sample_files()[:5]
    for path in good[:3]:
        shutil.copy(path, folder / path.name)
    for path in good[3:]:
        shutil.copy(path, folder / "nested" / path.name)
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "half.jpg").write_bytes(good[0].read_bytes()[:2000])
    shutil.copy(NOT_LEAF_SAMPLES[0], folder / "not_a_leaf.jpg")
    out = tmp_path / "results.csv"
    result = subprocess.run([sys.executable, "-m", "inference.batch", str(folder), "--out", str(out), "--batch-size", "2",
                             "--model", str(shipped_bundle_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "scored 6 images (5 diagnosed, 0 uncertain, 1 not a tomato leaf), 3 unreadable files" in result.stdout
    rows = {row["file"]: row for row in csv.DictReader(out.open())}
    assert len(rows) == 9
    for path in good:
        name = path.name if path in good[:3] else f"nested/{path.name}"
        assert rows[name]["status"] == "ok" and rows[name]["class_name"] == class_of(path)
        assert rows[name]["verdict"] == "diagnosed" and rows[name]["verdict_reason"] == ""
        assert 0 < float(rows[name]["probability"]) <= 1
    assert rows["not_a_leaf.jpg"]["verdict"] == "not_tomato_leaf"
    assert rows["not_a_leaf.jpg"]["verdict_reason"] == "not_leaf_like"
    for bad, words in (("notes.txt", "not a supported image"), ("empty.jpg", "empty"), ("half.jpg", "damaged")):
        assert rows[bad]["status"] == "error" and words in rows[bad]["error"], rows[bad]
