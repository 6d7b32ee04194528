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
from model.reject import (LEAF_ACCEPT_QUANTILE, LEAF_REJECT_QUANTILE, PROBABILITY_QUANTILE, QUALITY_FACTOR,
                          QUALITY_QUANTILE)

DATA = "../shared/data/plantvillage_tomato"


QUALITY_HOW = f"{QUALITY_FACTOR:g} × the {100 * QUALITY_QUANTILE:g} % quantile on validation leaves"


def pct(x: float) -> str:
    return f"{100 * x:.2f} %"


TRAIN_ARGS_SHOWN = ("image_size", "epochs", "batch_size", "lr", "warmup_epochs", "seed", "init_from", "negatives",
                    "freeze_blocks", "limit", "negative_repeats", "oe_weight")


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


def _verdict_cells(v: dict | None) -> str:
    if not v:
        return "| | |"
    return f"| {pct(v['diagnosed'])} | {pct(v['wrong_diagnosed'])} |"


def robustness_table(ev: dict) -> str:
    rows = ["| perturbation (whole test split) | accuracy (top-1, all images) | change (points) | \"diagnosed\" | "
            "diagnosed and wrong |", "| --- | --- | --- | --- | --- |",
            f"| none | {pct(ev['accuracy'])} | {_verdict_cells(ev.get('verdicts'))}"]
    for name, r in ev["robustness"].items():
        rows.append(f"| {name} | {pct(r['accuracy'])} | {-r['drop_points'] + 0.0:+.2f} {_verdict_cells(r.get('verdicts'))}")
    return "\n".join(rows)


def _q(quantile: float) -> str:
    return f"{100 * quantile:g} %"


RULE_ROWS = (
    ("leaf_reject", "leaf score below → `not_tomato_leaf`",
     f"{_q(LEAF_REJECT_QUANTILE)} quantile of the validation leaves' leaf scores"),
    ("min_saturation", "mean chroma below → `uncertain` (greyscale)", QUALITY_HOW),
    ("min_brightness", "mean intensity below → `uncertain` (dark)", QUALITY_HOW),
    ("min_sharpness", "mean abs. Laplacian below → `uncertain` (blurred)", QUALITY_HOW),
    ("leaf_accept", "leaf score below → `uncertain` (unclear leaf)",
     f"{_q(LEAF_ACCEPT_QUANTILE)} quantile of the validation leaves' leaf scores"),
    ("min_probability", "calibrated top-1 below → `uncertain` (classes close)",
     f"{_q(PROBABILITY_QUANTILE)} quantile on validation leaves"),
)


def rule_table(rule: dict) -> str:
    rows = ["| threshold, checked in this order | value | effect | chosen as |", "| --- | --- | --- | --- |"]
    rows += [f"| `{key}` | {rule[key]:.4g} | {effect} | {how} |" for key, effect, how in RULE_ROWS]
    return "\n".join(rows)


def negatives_table(reject: dict) -> str:
    rows = ["| images | count | diagnosed (false accept) | uncertain | not_tomato_leaf |", "| --- | --- | --- | --- | --- |"]
    test = reject["tomato_test_verdicts"]
    rows.append(f"| tomato-leaf test photos | 1374 | {pct(test['diagnosed'])} | {pct(test['uncertain'])} | "
                f"{pct(test['not_tomato_leaf'])} |")
    unseen = {k: v for k, v in reject["negatives_verdicts"].items() if not k.startswith("seen")}
    total = sum(v["images"] for v in unseen.values())
    pooled = {key: sum(v[key] * v["images"] for v in unseen.values()) / total for key in ("diagnosed", "uncertain", "not_tomato_leaf")}
    for name, v in reject["negatives_verdicts"].items():
        rows.append(f"| {name} | {v['images']} | {pct(v['diagnosed'])} | {pct(v['uncertain'])} | {pct(v['not_tomato_leaf'])} |")
    rows.append(f"| **all kinds never trained on** | {total} | **{pct(pooled['diagnosed'])}** | {pct(pooled['uncertain'])} | "
                f"{pct(pooled['not_tomato_leaf'])} |")
    return "\n".join(rows)


def methods_table(reject: dict) -> str:
    rows = ["| model | out-of-distribution score | AUROC, unseen kinds vs tomato test | false accepts at 99 % tomato "
            "recall (threshold from validation) | tomato test photos kept at that threshold |", "| --- | --- | --- | --- | --- |"]
    for model, methods in reject["comparison"].items():
        for method, r in methods.items():
            rows.append(f"| {model} | {method} | {r['auroc_unseen_kinds']:.4f} | {pct(r['false_accept_unseen_kinds'])} | "
                        f"{pct(r['tomato_test_recall'])} |")
    return "\n".join(rows)


def errors_table(ev: dict) -> str:
    rows = ["| file | true class | model says (probability) | probability of the true class |", "| --- | --- | --- | --- |"]
    for e in ev.get("errors", []):
        rows.append(f"| `{e['file'].split('/')[-1]}` | {e['true']} | {e['predicted']} ({e['probability']:.3f}) | "
                    f"{e['probability_of_true']:.3f} |")
    return "\n".join(rows)


ORDER_LABELS = ("hottest first", "random", "coldest first")  # the deletion test's orders (explain.json)


def deletion_areas(result: dict) -> list[float]:
    """Areas under the deletion curves of one explain.json, in ORDER_LABELS' order."""
    return [result["curves"][order]["auc"] for order in ORDER_LABELS]


def explanations_table(explain: dict | None, gradcam: dict | None = None) -> str:
    """The deletion test of the served maps (bench/explain_faithfulness.py's explain.json), and of the Grad-CAM
    alternative when it was measured: areas under the probability-vs-hidden-fraction curves, lower = faster fall."""
    if not explain:
        return "(not measured for this bundle: run `python -m bench.explain_faithfulness`)"
    rows = [f"| map | photos | {' | '.join(ORDER_LABELS)} | random − hottest |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for label, result in (("served: class-activation map, last layer "
                           f"({explain['grid'][0]} × {explain['grid'][1]})", explain),
                          ("Grad-CAM, stride-16 block (not served)", gradcam)):
        if result:
            measured = deletion_areas(result)
            rows.append(f"| {label} | {result['images']} | " + " | ".join(f"{a:.3f}" for a in measured)
                        + f" | {measured[1] - measured[0]:+.3f} |")
    areas = deletion_areas(explain)
    if areas[1] - areas[0] > 0.02:
        reading = ("Hiding the hottest cells first lowers the probability clearly faster than hiding random ones: the "
                   "map points at what the answer rests on.")
    else:
        coldest = ("Hiding the coldest cells first is the slowest (the map does know where the evidence is not), but "
                   "its" if areas[2] - areas[1] > 0.02 else "Its")
        reading = (f"A faithful map makes \"hottest first\" fall clearly faster than \"random\"; this one does not. "
                   f"{coldest} hottest cells are no more decisive than random ones: these lab photos show symptoms over "
                   "much of the leaf, and the cells are coarse. Read the overlay as \"roughly which part of the "
                   "photo\", not as a lesion outline.")
    return "\n".join(rows) + "\n\n" + reading


def render(shipped: Path, ev: dict, candidates: dict[str, dict], choice: str, template: str, reject: dict,
           explain: dict | None = None, gradcam: dict | None = None) -> str:
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
        "RULE": rule_table(reject["rule"]),
        "RULE_COMMAND": reject["rule"].get("chosen_by", ""),
        "NEGATIVES": negatives_table(reject),
        "METHODS": methods_table(reject),
        "DIAGNOSED": pct(ev["verdicts"]["diagnosed"]),
        "TOP1_DIAGNOSED": pct(ev["verdicts"]["accuracy_among_diagnosed"]),
        "EXPLANATIONS": explanations_table(explain, gradcam),
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
    p.add_argument("--reject", type=Path, required=True, help="reject.json written by model.reject")
    p.add_argument("--explain", type=Path, default=None,
                   help="explain.json of bench.explain_faithfulness (explain_gradcam.json beside it is read too)")
    p.add_argument("--template", type=Path, default=Path(__file__).with_name("model_card_template.md"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    candidates = {name: json.loads(Path(path).read_text()) for name, path in (c.split("=", 1) for c in args.candidate)}
    ev = json.loads(args.eval.read_text())
    choice = (args.choice_file.read_text() if args.choice_file else args.choice).strip()
    reject = json.loads(args.reject.read_text())
    explain = json.loads(args.explain.read_text()) if args.explain and args.explain.is_file() else None
    gradcam_path = args.explain.with_name("explain_gradcam.json") if args.explain else None
    gradcam = json.loads(gradcam_path.read_text()) if gradcam_path and gradcam_path.is_file() else None
    args.out.write_text(render(args.shipped, ev, candidates, choice, args.template.read_text(), reject, explain,
                               gradcam))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
