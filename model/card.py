"""Write trained_model/MODEL_CARD.md from evaluation.json files, so every figure in it is reproducible.

`python -m model.card --shipped trained_model/tomato_leaf_lite0.pt --eval trained_model/evaluation.json
 --candidate NAME=path/to/evaluation.json [...] --choice-file trained_model/candidates/choice.md
 --out trained_model/MODEL_CARD.md` (trained_model/candidates/ keeps the other candidates' headline figures
 and the text on why the shipped one won, so the card can be redrawn without the training runs).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from model.bundle import file_sha256

DATA = "../shared/data/plantvillage_tomato"


def pct(x: float) -> str:
    return f"{100 * x:.2f} %"


TRAIN_ARGS_SHOWN = ("image_size", "epochs", "batch_size", "lr", "warmup_epochs", "seed", "init_from")


def comparison_table(candidates: dict[str, dict]) -> str:
    rows = ["| candidate | input | test top-1 | macro recall | ECE (calibrated) | parameters | file MB | CPU ms/img, batch 1 | CPU ms/img, batch 8 | timed on |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, ev in candidates.items():
        speed = ev["speed_cpu_2_threads"]
        rows.append(f"| {name} | {ev['image_size']} px | {pct(ev['accuracy'])} | {pct(ev['macro_recall'])} | "
                    f"{pct(ev['ece_after'])} | {ev['parameters'] / 1e6:.2f} M | {ev['file_mb']} | "
                    f"{speed['batch1_ms_per_image']} | {speed['batch8_ms_per_image']} | {speed.get('cpu', 'not recorded')} |")
    return "\n".join(rows)


def per_class_table(ev: dict, display: dict[str, str]) -> str:
    rows = ["| class | shown as | precision | recall | F1 | test images |", "| --- | --- | --- | --- | --- | --- |"]
    for name, r in ev["per_class"].items():
        rows.append(f"| {name} | {display.get(name, name)} | {pct(r['precision'])} | {pct(r['recall'])} | "
                    f"{pct(r['f1'])} | {r['support']} |")
    return "\n".join(rows)


def robustness_table(ev: dict) -> str:
    rows = ["| perturbation (whole test split) | accuracy | change (points) |", "| --- | --- | --- |",
            f"| none | {pct(ev['accuracy'])} | |"]
    for name, r in ev["robustness"].items():
        rows.append(f"| {name} | {pct(r['accuracy'])} | {-r['drop_points'] + 0.0:+.2f} |")
    return "\n".join(rows)


def errors_table(ev: dict) -> str:
    rows = ["| file | true class | model says (probability) | probability of the true class |", "| --- | --- | --- | --- |"]
    for e in ev.get("errors", []):
        rows.append(f"| `{e['file'].split('/')[-1]}` | {e['true']} | {e['predicted']} ({e['probability']:.3f}) | "
                    f"{e['probability_of_true']:.3f} |")
    return "\n".join(rows)


def render(shipped: Path, ev: dict, candidates: dict[str, dict], choice: str, template: str) -> str:
    raw = torch.load(shipped, map_location="cpu", weights_only=True)
    display = dict(zip(raw["class_names"], raw["display_names"]))
    history = raw["metrics"].get("history", [])
    values = {
        "SHA256": file_sha256(shipped),
        "FILE": shipped.name,
        "SIZE_MB": f"{shipped.stat().st_size / 1e6:.1f}",
        "COMPARISON": comparison_table(candidates),
        "CHOICE": choice,
        "PER_CLASS": per_class_table(ev, display),
        "ROBUSTNESS": robustness_table(ev),
        "ERRORS": errors_table(ev),
        "ACCURACY": pct(ev["accuracy"]),
        "MACRO_RECALL": pct(ev["macro_recall"]),
        "MACRO_F1": pct(ev["macro_f1"]),
        "TEST_IMAGES": str(ev["test_images"]),
        "ECE_BEFORE": pct(ev["ece_before"]),
        "ECE_AFTER": pct(ev["ece_after"]),
        "TEMPERATURE": f"{ev['temperature']:.3f}",
        "B1": str(ev["speed_cpu_2_threads"]["batch1_ms_per_image"]),
        "B8": str(ev["speed_cpu_2_threads"]["batch8_ms_per_image"]),
        "CPU": str(ev["speed_cpu_2_threads"].get("cpu", "not recorded")),
        "SERVED_BACKEND": str(ev["speed_cpu_2_threads"].get("served_backend", "eager")),
        "SERVED_B1": str(ev["speed_cpu_2_threads"].get("served_batch1_ms_per_image", "not measured")),
        "SERVED_B8": str(ev["speed_cpu_2_threads"].get("served_batch8_ms_per_image", "not measured")),
        "IMAGE_SIZE": str(ev["image_size"]),
        "HISTORY": "\n".join(f"| {h['epoch']} | {h['train_loss']:.3f} | {pct(h['train_acc'])} | {pct(h['val_acc'])} | "
                             f"{h['seconds']:.0f} |" for h in history),
        "TRAIN_ARGS": " ".join(f"--{k.replace('_', '-')} {v}" for k, v in raw["provenance"].get("train_args", {}).items()
                               if k in TRAIN_ARGS_SHOWN and v not in (None, "None")),
        "DATA": DATA,
    }
    text = template
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shipped", type=Path, required=True)
    p.add_argument("--eval", type=Path, required=True, help="evaluation.json of the shipped bundle")
    p.add_argument("--candidate", action="append", default=[], help="NAME=evaluation.json (repeatable)")
    p.add_argument("--choice", default="", help="why the shipped candidate was chosen (markdown)")
    p.add_argument("--choice-file", type=Path, help="the same, read from a markdown file")
    p.add_argument("--template", type=Path, default=Path(__file__).with_name("model_card_template.md"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    candidates = {name: json.loads(Path(path).read_text()) for name, path in (c.split("=", 1) for c in args.candidate)}
    ev = json.loads(args.eval.read_text())
    choice = (args.choice_file.read_text() if args.choice_file else args.choice).strip()
    args.out.write_text(render(args.shipped, ev, candidates, choice, args.template.read_text()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
