"""Evaluate a bundle on the held-out test split, through the same decode/preprocess path as serving.

`python -m model.evaluate --model runs/x/bundle.pt --data DIR --split runs/x/split.csv --out DIR [--store]`
writes evaluation.json (accuracy, per-class P/R/F1, every misclassified file, calibration, robustness, speed),
confusion_matrix.png and test_errors.png (the misclassified images); `--store` also writes the metrics into the bundle itself.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path
from typing import Callable

import torch
from PIL import Image, ImageEnhance, ImageOps
from tqdm import tqdm

from model.calibration import expected_calibration_error
from model.data import read_split
from model.hardware import cpu_description
from model.verdict import VERDICTS

Perturbation = Callable[[Image.Image], bytes]


def _jpeg(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _phone_sized(img: Image.Image) -> bytes:
    side = 3464  # 3464 x 3464 = 12.0 MP, what a phone camera sends
    return _jpeg(img.resize((side, side), Image.BILINEAR), quality=90)


def _zoomed_half(img: Image.Image) -> bytes:
    """The centre of the photo covering half its area, as when a user zooms in on part of the leaf."""
    side = round(min(img.size) / 2 ** 0.5)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return _jpeg(img.crop((left, top, left + side, top + side)))


PERTURBATIONS: dict[str, Perturbation] = {
    "rotate 90": lambda im: _jpeg(im.transpose(Image.Transpose.ROTATE_90)),
    "rotate 180": lambda im: _jpeg(im.transpose(Image.Transpose.ROTATE_180)),
    "horizontal flip": lambda im: _jpeg(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
    "vertical flip": lambda im: _jpeg(im.transpose(Image.Transpose.FLIP_TOP_BOTTOM)),
    "brightness x1.4": lambda im: _jpeg(ImageEnhance.Brightness(im).enhance(1.4)),
    "brightness x0.6": lambda im: _jpeg(ImageEnhance.Brightness(im).enhance(0.6)),
    "JPEG quality 30": lambda im: _jpeg(im, quality=30),
    "12-MP upscaled copy": _phone_sized,
    "zoomed half-leaf crop": _zoomed_half,
    "greyscale": lambda im: _jpeg(ImageOps.grayscale(im).convert("RGB")),
}


def per_class_report(labels: torch.Tensor, predicted: torch.Tensor, class_names: list[str]) -> dict[str, dict[str, float]]:
    report = {}
    for i, name in enumerate(class_names):
        tp = int(((predicted == i) & (labels == i)).sum())
        support, claimed = int((labels == i).sum()), int((predicted == i).sum())
        precision = tp / claimed if claimed else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        report[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return report


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, n: int) -> list[list[int]]:
    matrix = torch.zeros(n, n, dtype=torch.long)
    for t, p in zip(labels.tolist(), predicted.tolist()):
        matrix[t, p] += 1
    return matrix.tolist()


def misclassified(files: list[str], labels: torch.Tensor, probs: torch.Tensor, class_names: list[str]) -> list[dict]:
    """Every test image the model gets wrong, most confident mistake first: the list a reader needs to judge
    whether an error is the model's or the label's (a few PlantVillage files are mislabelled or not leaves)."""
    predicted = probs.argmax(1)
    wrong = [i for i in range(len(files)) if predicted[i] != labels[i]]
    rows = [{"file": files[i], "true": class_names[int(labels[i])], "predicted": class_names[int(predicted[i])],
             "probability": round(float(probs[i, predicted[i]]), 3),
             "probability_of_true": round(float(probs[i, labels[i]]), 3)} for i in wrong]
    return sorted(rows, key=lambda r: -r["probability"])


def plot_errors(errors: list[dict], data: Path, path: Path, columns: int = 4, side: int = 200) -> None:
    """A contact sheet of the misclassified test images, each captioned true → predicted (probability)."""
    from PIL import ImageDraw

    rows = max(1, -(-len(errors) // columns))
    caption = 30
    sheet = Image.new("RGB", (columns * side, rows * (side + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, error in enumerate(errors):
        x, y = (k % columns) * side, (k // columns) * (side + caption)
        with Image.open(data / error["file"]) as image:
            thumb = image.convert("RGB")
        thumb.thumbnail((side - 4, side - 4))
        sheet.paste(thumb, (x + 2, y + caption))
        draw.text((x + 4, y + 2), f"true: {error['true']}", fill="black")
        draw.text((x + 4, y + 15), f"model: {error['predicted']} ({error['probability']:.2f})", fill="firebrick")
    sheet.save(path, optimize=True)


def plot_confusion(matrix: list[list[int]], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 7))
    ax.imshow(torch.tensor(matrix).float().log1p(), cmap="Greens")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for r, row in enumerate(matrix):
        for c, value in enumerate(row):
            ax.text(c, r, str(value), ha="center", va="center", fontsize=8, color="black" if r != c else "white")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Test-split confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def median_forward_ms(run: Callable[[torch.Tensor], object], side: int, batch: int, repeats: int = 30) -> float:
    """Median wall time per image of `run` on a random (batch, 3, side, side) input, after 5 warm-up calls."""
    x = torch.randn(batch, 3, side, side)
    for _ in range(5):
        run(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - start) * 1000 / batch)
    return round(sorted(times)[len(times) // 2], 2)


def measure_speed(bundle, threads: int = 2, repeats: int = 30) -> dict[str, float]:
    """Median CPU forward time per image at batch 1 and batch 8 (preprocessed input, no decode), for the eager
    network (`batchN_ms_per_image`) and for the engine the server runs (`served_batchN_ms_per_image`)."""
    from inference.engines import EagerEngine

    torch.set_num_threads(threads)
    side = bundle.preprocess.image_size
    result: dict = {"served_backend": bundle.engine.name, "cpu": cpu_description()}
    runners = {"": EagerEngine(bundle.network), "served_": bundle.engine}
    for prefix, run in runners.items():
        for batch in (1, 8):
            result[f"{prefix}batch{batch}_ms_per_image"] = median_forward_ms(run, side, batch, repeats)
    return result


def evaluate(model: Path, data: Path, split: Path, out: Path, robustness: bool = True, threads: int = 2) -> dict:
    from inference import decode_image, load_bundle, predict  # the serving path, so we measure what we ship

    torch.set_num_threads(threads)
    bundle = load_bundle(model, device="cpu")
    index = {c: i for i, c in enumerate(bundle.class_names)}
    test = [s for s in read_split(split) if s.split == "test"]
    file_bytes = [(data / s.path).read_bytes() for s in test]
    originals = [decode_image(b) for b in file_bytes]
    labels = torch.tensor([index[s.class_name] for s in test])

    def score(encoded: Callable[[int], bytes], desc: str) -> tuple[torch.Tensor, list[str]]:
        """Calibrated probabilities and verdicts of test image i given as file bytes, decoded as the server does."""
        probs, found = [], []
        for start in tqdm(range(0, len(test), 32), desc=desc, mininterval=10):
            decoded = [decode_image(encoded(i)) for i in range(start, min(start + 32, len(test)))]
            preds = predict(bundle, decoded, top_k=1)
            probs.append(torch.tensor([[p.probabilities[c] for c in bundle.class_names] for p in preds]))
            found += [p.verdict for p in preds]
        return torch.cat(probs), found

    def verdict_summary(probs: torch.Tensor, found: list[str]) -> dict[str, float]:
        """Share diagnosed, share diagnosed AND wrong (the answers that mislead), top-1 among the diagnosed."""
        diagnosed = torch.tensor([v == "diagnosed" for v in found])
        right = probs.argmax(1) == labels
        return {"diagnosed": float(diagnosed.float().mean()),
                "wrong_diagnosed": float((diagnosed & ~right).float().mean()),
                "accuracy_among_diagnosed": float(right[diagnosed].float().mean()) if diagnosed.any() else float("nan"),
                **{f"share_{v}": found.count(v) / len(found) for v in VERDICTS if v != "diagnosed"}}

    calibrated, test_verdicts = score(file_bytes.__getitem__, "test")
    predicted = calibrated.argmax(1)
    raw_logits = calibrated.clamp_min(1e-12).log() * bundle.temperature  # undo T: softmax(log p * T) = softmax(z)
    uncalibrated = torch.softmax(raw_logits, 1)
    report = per_class_report(labels, predicted, bundle.class_names)
    accuracy = float((predicted == labels).float().mean())
    result: dict = {
        "model": str(model),
        "test_images": len(test),
        "accuracy": accuracy,
        "macro_recall": sum(r["recall"] for r in report.values()) / len(report),
        "macro_precision": sum(r["precision"] for r in report.values()) / len(report),
        "macro_f1": sum(r["f1"] for r in report.values()) / len(report),
        "per_class": report,
        "confusion_matrix": confusion_matrix(labels, predicted, len(bundle.class_names)),
        "errors": misclassified([s.path for s in test], labels, calibrated, bundle.class_names),
        "verdicts": verdict_summary(calibrated, test_verdicts),
        "verdict_rule": bundle.verdict_rule.to_dict(),
        "class_names": bundle.class_names,
        "temperature": bundle.temperature,
        "ece_before": expected_calibration_error(uncalibrated, labels),
        "ece_after": expected_calibration_error(calibrated, labels),
        "parameters": sum(p.numel() for p in bundle.network.parameters()),
        "file_mb": round(os.path.getsize(model) / 1e6, 2),
        "image_size": bundle.preprocess.image_size,
        "speed_cpu_2_threads": measure_speed(bundle, threads),
    }
    if robustness:
        result["robustness"] = {}
        for name, perturb in PERTURBATIONS.items():
            probs, found = score(lambda i: perturb(originals[i]), name)
            acc = float((probs.argmax(1) == labels).float().mean())
            result["robustness"][name] = {"accuracy": acc, "drop_points": round((accuracy - acc) * 100, 2),
                                          "verdicts": verdict_summary(probs, found)}
    out.mkdir(parents=True, exist_ok=True)
    plot_confusion(result["confusion_matrix"], bundle.class_names, out / "confusion_matrix.png")
    plot_errors(result["errors"], data, out / "test_errors.png")
    (out / "evaluation.json").write_text(json.dumps(result, indent=2))
    return result


def store_metrics(model: Path, result: dict) -> None:
    """Copy the headline metrics into the bundle so the served model can report them."""
    raw = torch.load(model, map_location="cpu", weights_only=True)
    keep = ("test_images", "accuracy", "macro_recall", "macro_precision", "macro_f1", "ece_before", "ece_after",
            "verdicts")
    raw["metrics"] = {**raw.get("metrics", {}), **{k: result[k] for k in keep},
                      "per_class_recall": {k: v["recall"] for k, v in result["per_class"].items()},
                      "robustness": {k: v["accuracy"] for k, v in result.get("robustness", {}).items()}}
    torch.save(raw, model)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="bundle .pt to evaluate")
    p.add_argument("--data", type=Path, required=True, help="ImageFolder root (../shared/data/plantvillage_tomato)")
    p.add_argument("--split", type=Path, required=True, help="split.csv written by model.train")
    p.add_argument("--out", type=Path, required=True, help="folder for evaluation.json and confusion_matrix.png")
    p.add_argument("--no-robustness", action="store_true", help="skip the perturbation table (faster)")
    p.add_argument("--store", action="store_true", help="also write the metrics into the bundle file")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    result = evaluate(args.model, args.data, args.split, args.out, not args.no_robustness, args.threads)
    if args.store:
        store_metrics(args.model, result)
    summary = {k: result[k] for k in ("accuracy", "macro_recall", "ece_before", "ece_after", "verdicts",
                                      "speed_cpu_2_threads")}
    print(json.dumps({**summary, "robustness": result.get("robustness")}, indent=2))


if __name__ == "__main__":
    main()
