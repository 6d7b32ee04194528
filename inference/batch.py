"""Offline bulk scoring: `python -m inference.batch FOLDER --out results.csv`.

Scores every file under FOLDER in batches; a file that is not a usable image gets a row with the
reason instead of stopping the run. `--explain-dir DIR` also saves, per image, where the model looked (the
class-activation map over the photo as the network saw it, inference/explain.py) as DIR/<file>.png. With
`--cluster URL` the folder is sent to the job API of a running cluster instead (jobs/client.py) and the same CSV
comes back.
"""
from __future__ import annotations

import argparse
import base64
import csv
import sys
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from inference.bundle import DEFAULT_BUNDLE_PATH, ModelBundle, load_bundle
from inference.images import InvalidImage, decode_image
from inference.predict import predict
from inference.rows import FIELDS, error_row, prediction_row
from model.verdict import VERDICTS


def iter_files(folder: Path) -> Iterator[Path]:
    """Every regular, non-hidden file below `folder`, in a stable order."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts):
            yield path


def save_overlay(explain_dir: Path, name: str, overlay_b64: str) -> None:
    target = explain_dir / Path(name).with_suffix(".png")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(base64.b64decode(overlay_b64))


def score_folder(folder: Path, out: Path, model: Path = DEFAULT_BUNDLE_PATH, batch_size: int = 32, top_k: int = 3,
                 device: str | None = None, explain_dir: Path | None = None,
                 bundle: ModelBundle | None = None) -> dict[str, int]:
    """Write one CSV row per file (and an overlay PNG per image into `explain_dir`); returns counts of ok and
    error rows. `bundle`: already loaded (benchmarks time the scoring alone)."""
    bundle = bundle or load_bundle(model, device=device)
    files = list(iter_files(folder))
    counts = {"ok": 0, "error": 0, **dict.fromkeys(VERDICTS, 0)}
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh, tqdm(total=len(files), unit="img", file=sys.stderr) as bar:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        for start in range(0, len(files), batch_size):
            good, images = [], []
            for path in files[start : start + batch_size]:
                name = str(path.relative_to(folder))
                try:
                    images.append(decode_image(path.read_bytes()))
                    good.append(name)
                except (InvalidImage, OSError) as exc:
                    writer.writerow(error_row(name, str(exc)))
                    counts["error"] += 1
            for name, pred in zip(good, predict(bundle, images, top_k, explain=explain_dir is not None)):
                if explain_dir is not None:
                    save_overlay(explain_dir, name, pred.explanation["overlay_png"])
                writer.writerow(prediction_row(name, pred.to_dict()))
                counts["ok"] += 1
                counts[pred.verdict] += 1
            bar.update(min(batch_size, len(files) - start))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--out", type=Path, default=Path("results.csv"), help="CSV to write")
    parser.add_argument("--model", type=Path, default=DEFAULT_BUNDLE_PATH, help="model bundle (.pt)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA if available)")
    parser.add_argument("--explain-dir", type=Path, default=None,
                        help="also save where the model looked, one PNG overlay per image, into this folder")
    parser.add_argument("--cluster", default=None, metavar="URL",
                        help="score on a running cluster's job API (e.g. http://127.0.0.1:5000) instead of here")
    parser.add_argument("--token", default=None, help="API token for --cluster (default: TOMATO_API_TOKEN)")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    if args.cluster:
        if args.explain_dir:
            parser.error("--explain-dir works with local scoring only, not with --cluster")
        from jobs.client import score_on_cluster  # HTTP only: no model is loaded here

        counts = score_on_cluster(args.cluster, list(iter_files(args.folder)), args.folder, args.out, args.token)
        print(f"scored {counts['ok']} images on {args.cluster}, {counts['error']} unreadable files -> {args.out}")
        return 0
    counts = score_folder(args.folder, args.out, args.model, args.batch_size, args.top_k, args.device,
                          args.explain_dir)
    print(f"scored {counts['ok']} images ({counts['diagnosed']} diagnosed, {counts['uncertain']} uncertain, "
          f"{counts['not_tomato_leaf']} not a tomato leaf), {counts['error']} unreadable files -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
