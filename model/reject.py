"""Choose the verdict thresholds on validation and measure the reject option on kinds never trained on.

`python -m model.reject --model runs/v2/bundle.pt --data DIR --split runs/v2/split.csv --negatives NEG
 --negatives-split runs/v2/negatives_split.csv --out runs/v2/reject [--baseline trained_model/old.pt] [--store]`

1. Scores every image once with the eager network: tomato validation and test photos (split by leaf), the
   not-a-tomato-leaf images (validation images of the training kinds, and the held-out kinds), and synthetic
   test kinds that training never made.
2. Chooses the thresholds of `model.verdict.VerdictRule` on the tomato VALIDATION photos only (quantiles, below),
   so that the rule keeps about 99.5 % of real tomato photos "diagnosed"; the leaf score is a logistic map of the
   energy of the disease logits (logsumexp) and the leaf head's logit, fitted on tomato validation photos against
   validation images of the negative kinds seen in training. `--store` writes the rule into the bundle.
3. Compares out-of-distribution scores on the same data (AUROC, false-accept rate at 99 % tomato recall, per held-out
   kind): the leaf head, the maximum softmax probability, the energy score and a Mahalanobis distance on the
   1,280-d features, and the served combination, for this bundle and for `--baseline` (a 1.x bundle without a leaf
   head).
4. Writes reject.json and roc_curves.png into `--out`.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from model.bundle import network_from_bundle, read_bundle
from model.data import load_images, read_split
from model.negatives import SIDE, TEST_SYNTHETIC, Negative, load_negative_images, synthetic_negatives
from model.transforms import PreprocessConfig, build_transform
from model.verdict import VERDICTS, VerdictRule, decide, image_statistics, leaf_scores

# Quantiles of the tomato validation photos that set each threshold (documented in the model card). Up to 2.1.0
# they were 0.003 / 0.005 / 0.003, which kept 99.27 % of validation photos "diagnosed": 0.27 points above the 99 %
# target, one binomial standard deviation of a 1,374-photo test split, and 2.1.0's test split came out at 98.76 %.
# From 2.2.0 they aim at about 99.5 % on validation (99.56 % with 2.2.0's leaf score).
LEAF_REJECT_QUANTILE = 0.001  # at most 0.1 % of validation leaves are called "not a tomato leaf"
LEAF_ACCEPT_QUANTILE = 0.002  # ... and 0.1 % more "uncertain: unclear leaf"
PROBABILITY_QUANTILE = 0.002  # top-1 probability below what 99.8 % of validation leaves reach: "classes close"
QUALITY_QUANTILE = 0.002  # a photo statistic below HALF of the 0.2 % quantile of validation leaves: poor photo
QUALITY_FACTOR = 0.5
ENERGY_MAP_SMOOTHING = 0.02  # the leaf score's logistic map aims at 0.98 / 0.02, never at exactly 1 / 0
LEAF_MAP_L2 = 1e-3  # a little weight decay on the standardised inputs: two correlated scores stay well-posed
SYNTHETIC_TEST_PER_KIND = 100
MAHALANOBIS_FIT_IMAGES = 3000


@dataclass
class Scored:
    """One group of images scored by one network."""

    logits: torch.Tensor  # (N, C) disease logits
    leaf_logit: torch.Tensor | None  # (N,) or None without a leaf head
    features: torch.Tensor  # (N, 1280)
    statistics: torch.Tensor  # (N, 3) saturation, brightness, sharpness


class Scorer:
    def __init__(self, path: Path) -> None:
        raw = read_bundle(path)
        self.network = network_from_bundle(raw)
        self.preprocess = PreprocessConfig.from_dict(raw["preprocess"])
        self.transform = build_transform(self.preprocess)
        self.temperature = float(raw["temperature"])
        self.classes = len(raw["class_names"])
        self.version = str(raw.get("version", "?"))

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, batch_size: int = 64) -> Scored:
        parts: list[tuple[torch.Tensor, ...]] = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.transform(img) for img in images[start : start + batch_size]])
            features = self.network.features(batch.contiguous(memory_format=torch.channels_last))
            outputs = self.network.head_outputs(features)
            parts.append((outputs, features, image_statistics(batch, self.preprocess.mean, self.preprocess.std)))
        outputs = torch.cat([p[0] for p in parts])
        leaf = outputs[:, self.classes] if outputs.shape[1] > self.classes else None
        return Scored(outputs[:, : self.classes], leaf, torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]))

    def probabilities(self, scored: Scored) -> torch.Tensor:
        return torch.softmax(scored.logits / self.temperature, dim=1)

    def leaf_score(self, scored: Scored, rule: VerdictRule) -> torch.Tensor:
        """The served leaf score (model.verdict.leaf_scores) of every image."""
        outputs = scored.logits if scored.leaf_logit is None else torch.cat([scored.logits, scored.leaf_logit[:, None]], 1)
        return leaf_scores(rule, outputs, self.classes, self.probabilities(scored))


class Mahalanobis:
    """Class means and one shared covariance of the features of tomato training photos (Lee et al. 2018)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, shrinkage: float = 1e-3) -> None:
        features = features.double()
        present = labels.unique()  # sorted; a small sample may lack a class
        self.means = torch.stack([features[labels == c].mean(0) for c in present])
        centred = features - self.means[torch.searchsorted(present, labels)]
        covariance = centred.T @ centred / len(features)
        covariance += shrinkage * covariance.diagonal().mean() * torch.eye(len(covariance), dtype=covariance.dtype)
        self.precision = torch.linalg.inv(covariance)

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """Higher = more like a tomato photo: minus the smallest class distance."""
        diff = features.double()[:, None, :] - self.means[None]
        distances = ((diff @ self.precision) * diff).sum(-1)
        return -distances.min(1).values.float()


def auroc(positives: torch.Tensor, negatives: torch.Tensor) -> float:
    """P(score of a random positive > score of a random negative), ties count half (Mann-Whitney U)."""
    scores = torch.cat([positives, negatives]).double()
    ranks = scores.argsort().argsort().double() + 1
    # average ranks of ties
    unique, inverse = scores.unique(return_inverse=True)
    sums = torch.zeros(len(unique), dtype=torch.double).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(unique), dtype=torch.double).index_add_(0, inverse, torch.ones_like(ranks))
    ranks = (sums / counts)[inverse]
    n_pos, n_neg = len(positives), len(negatives)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def quantile(values: torch.Tensor, q: float) -> float:
    return float(torch.quantile(values.double(), q))


def fit_leaf_map(tomato: torch.Tensor, other: torch.Tensor) -> tuple[list[float], float]:
    """(weights, shift) of sigmoid(inputs @ weights + shift): a logistic fit of "tomato photo" on one or more scores
    per image ((N,) or (N, k): the energy, then the leaf logit), the two groups weighted equally, so the leaf score
    reads as a probability-like number (near 1 for the photos the model knows) instead of unbounded logits. Which
    images are rejected depends on the thresholds, chosen afterwards on tomato validation photos.

    The targets are smoothed (ENERGY_MAP_SMOOTHING): when the two groups separate completely, a plain logistic fit
    grows the slope without bound and every score rounds to exactly 0 or 1, which leaves no room for thresholds."""
    x = torch.cat([tomato, other]).double().reshape(len(tomato) + len(other), -1)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-12)
    standard = (x - mean) / std
    y = torch.cat([torch.full((len(tomato),), 1 - ENERGY_MAP_SMOOTHING),
                   torch.full((len(other),), ENERGY_MAP_SMOOTHING)]).double()
    weight = torch.cat([torch.full((len(tomato),), 0.5 / len(tomato)), torch.full((len(other),), 0.5 / len(other))]).double()
    params = torch.zeros(x.shape[1] + 1, dtype=torch.double, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], lr=0.5, max_iter=300)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        z = standard @ params[:-1] + params[-1]
        loss = (weight * torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")).sum()
        loss = loss + LEAF_MAP_L2 * params[:-1].pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    weights = params.detach()[:-1] / std
    return weights.tolist(), float(params.detach()[-1] - (weights * mean).sum())


def fit_energy_map(tomato: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """(scale, shift) of sigmoid(scale * energy + shift): `fit_leaf_map` on the energy alone (bundles up to 2.1.0)."""
    weights, shift = fit_leaf_map(tomato, other)
    return weights[0], shift


def leaf_inputs(scored: "Scored") -> torch.Tensor:
    """(N, 2): the energy of the disease logits and the leaf head's logit, the served leaf score's two inputs."""
    return torch.stack([energy(scored), scored.leaf_logit], dim=1)


def choose_rule(scorer: "Scorer", val: Scored, seen_negatives: Scored, command: str) -> VerdictRule:
    """Thresholds from the tomato validation photos; the leaf map from them and the validation negatives."""
    (scale, head_weight), shift = fit_leaf_map(leaf_inputs(val), leaf_inputs(seen_negatives))
    base = VerdictRule(leaf_source="energy_and_leaf_head", energy_scale=scale, energy_shift=shift,
                       leaf_head_weight=head_weight)
    leaf_val = scorer.leaf_score(val, base)
    low = [QUALITY_FACTOR * quantile(val.statistics[:, i], QUALITY_QUANTILE) for i in range(3)]
    return VerdictRule(
        leaf_source="energy_and_leaf_head", energy_scale=scale, energy_shift=shift, leaf_head_weight=head_weight,
        leaf_reject=quantile(leaf_val, LEAF_REJECT_QUANTILE),
        leaf_accept=quantile(leaf_val, LEAF_ACCEPT_QUANTILE),
        min_probability=quantile(scorer.probabilities(val).max(1).values, PROBABILITY_QUANTILE),
        min_saturation=low[0], min_brightness=low[1], min_sharpness=low[2],
        chosen_by=command,
    )


def energy(scored: Scored) -> torch.Tensor:
    return torch.logsumexp(scored.logits, dim=1)


def verdicts(rule: VerdictRule, leaf: torch.Tensor, top: torch.Tensor, stats: torch.Tensor) -> list[str]:
    return [decide(rule, float(l), float(t), s)[0] for l, t, s in zip(leaf, top, stats.tolist())]


def read_negatives_split(path: Path) -> list[Negative]:
    with open(path, newline="") as fh:
        return [Negative(r["file"], r["kind"], r["category"], r["split"]) for r in csv.DictReader(fh)]


def negative_groups(negatives_root: Path, split_path: Path, seed: int = 1) -> dict[str, torch.Tensor]:
    """Images by group: the validation images of the training kinds, each held-out kind, each synthetic test kind."""
    negatives = read_negatives_split(split_path)
    groups: dict[str, list[Negative]] = {}
    for n in negatives:
        if n.split == "val":
            groups.setdefault(f"seen kinds, unseen images ({n.kind})", []).append(n)
        elif n.split == "heldout":
            name = "held-out Caltech-101 categories" if n.kind == "photo" else f"held-out crop: {n.category.split('__')[0]} leaves"
            groups.setdefault(name, []).append(n)
    images = {name: load_negative_images(negatives_root, items) for name, items in sorted(groups.items())}
    for kind in TEST_SYNTHETIC:
        images[f"synthetic, never trained: {kind}"] = synthetic_negatives(kind, SYNTHETIC_TEST_PER_KIND, seed)
    return images


def method_scores(scorer: Scorer, scored: Scored, mahalanobis: Mahalanobis,
                  rule: VerdictRule | None = None) -> dict[str, torch.Tensor]:
    probabilities = scorer.probabilities(scored)
    scores = {
        "max softmax probability": probabilities.max(1).values,
        "energy (logsumexp of logits)": energy(scored),
        "Mahalanobis on features": mahalanobis.score(scored.features),
    }
    if scored.leaf_logit is not None:
        scores["leaf head"] = torch.sigmoid(scored.leaf_logit)
        if rule is not None:
            scores["energy + leaf head (served)"] = scorer.leaf_score(scored, rule)
    return scores


def compare(scorer: Scorer, fit: Scored, fit_labels: torch.Tensor, val: Scored, test: Scored,
            negatives: dict[str, Scored], rule: VerdictRule | None = None) -> dict:
    """AUROC and false accepts at 99 % tomato recall (threshold from validation) for every method of `scorer`, on
    images it has already scored (`fit`: training photos for the Mahalanobis means and covariance)."""
    mahalanobis = Mahalanobis(fit.features, fit_labels)
    val_scores = method_scores(scorer, val, mahalanobis, rule)
    test_scores = method_scores(scorer, test, mahalanobis, rule)
    negative_scores = {name: method_scores(scorer, scored, mahalanobis, rule) for name, scored in negatives.items()}
    unseen = [n for n in negatives if not n.startswith("seen")]
    result = {}
    for method in val_scores:
        threshold = quantile(val_scores[method], 0.01)
        pooled = torch.cat([negative_scores[n][method] for n in unseen])
        result[method] = {
            "auroc_unseen_kinds": auroc(test_scores[method], pooled),
            "threshold_99_recall": threshold,
            "tomato_test_recall": float((test_scores[method] >= threshold).float().mean()),
            "false_accept_unseen_kinds": float((pooled >= threshold).float().mean()),
            "false_accept_by_group": {n: float((s[method] >= threshold).float().mean()) for n, s in negative_scores.items()},
            "roc": roc_points(test_scores[method], pooled),
        }
    return result


def score_groups(scorer: Scorer, tomato: dict[str, torch.Tensor], train_images: torch.Tensor,
                 negatives: dict[str, torch.Tensor]) -> tuple[Scored, Scored, Scored, dict[str, Scored]]:
    """Every image through `scorer` once: training sample, validation, test, and each negative group."""
    return (scorer(train_images), scorer(tomato["val"]), scorer(tomato["test"]),
            {name: scorer(images) for name, images in negatives.items()})


def concat(parts: list[Scored]) -> Scored:
    leaf = None if parts[0].leaf_logit is None else torch.cat([p.leaf_logit for p in parts])
    return Scored(torch.cat([p.logits for p in parts]), leaf, torch.cat([p.features for p in parts]),
                  torch.cat([p.statistics for p in parts]))


def roc_points(positives: torch.Tensor, negatives: torch.Tensor, points: int = 200) -> list[list[float]]:
    thresholds = torch.quantile(torch.cat([positives, negatives]).double(), torch.linspace(0, 1, points, dtype=torch.double))
    return [[float((negatives.double() >= t).float().mean()), float((positives.double() >= t).float().mean())]
            for t in thresholds]


def plot_roc(comparisons: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5))
    for model, methods in comparisons.items():
        for method, r in methods.items():
            fpr, tpr = zip(*r["roc"])
            ax.plot(fpr, tpr, label=f"{model}: {method} (AUROC {r['auroc_unseen_kinds']:.3f})",
                    linestyle="-" if model.startswith("2") else "--")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(0, 1)
    ax.set_ylim(0.9, 1.001)
    ax.set_xlabel("false accepts: share of never-trained non-leaf images scored as leaves")
    ax.set_ylabel("tomato test photos accepted")
    ax.set_title("Reject option on kinds never trained on")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="bundle with a leaf head (trained with --negatives)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("--negatives", type=Path, required=True)
    p.add_argument("--negatives-split", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--baseline", type=Path, default=None, help="a 1.x bundle to compare against")
    p.add_argument("--store", action="store_true", help="write the chosen rule into the bundle")
    p.add_argument("--version", default=None,
                   help="with --store: the bundle's new version (a new rule changes answers, so it is a new model)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="at most this many images per group (smoke runs)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m model.reject " + " ".join(argv if argv is not None else sys.argv[1:])

    samples = read_split(args.split)
    if args.limit:
        samples = [s for split in ("train", "val", "test") for s in [x for x in samples if x.split == split][: args.limit]]
    tomato = {split: load_images(args.data, [s for s in samples if s.split == split]) for split in ("val", "test")}
    train = [s for s in samples if s.split == "train"]
    generator = torch.Generator().manual_seed(0)
    picked = [train[i] for i in torch.randperm(len(train), generator=generator)[:MAHALANOBIS_FIT_IMAGES].tolist()]
    classes = sorted({s.class_name for s in samples})
    train_sample = (load_images(args.data, picked), torch.tensor([classes.index(s.class_name) for s in picked]))
    negatives = negative_groups(args.negatives, args.negatives_split)
    if args.limit:
        negatives = {name: images[: args.limit] for name, images in negatives.items()}
    print({k: len(v) for k, v in negatives.items()}, flush=True)

    scorer = Scorer(args.model)
    fit, val, test, scored_negatives = score_groups(scorer, tomato, train_sample[0], negatives)
    if val.leaf_logit is None:
        raise SystemExit(f"{args.model} has no leaf head: train it with --negatives")
    seen = concat([scored for name, scored in scored_negatives.items() if name.startswith("seen")])
    rule = choose_rule(scorer, val, seen, command)

    def served_verdicts(scored: Scored) -> list[str]:
        return verdicts(rule, scorer.leaf_score(scored, rule), scorer.probabilities(scored).max(1).values,
                        scored.statistics)

    def verdict_shares(scored: Scored) -> dict[str, float]:
        found = served_verdicts(scored)
        return {v: found.count(v) / len(found) for v in VERDICTS}

    test_verdicts = served_verdicts(test)
    labels = torch.tensor([classes.index(s.class_name) for s in samples if s.split == "test"])
    predicted = scorer.probabilities(test).argmax(1)
    diagnosed = torch.tensor([v == "diagnosed" for v in test_verdicts])
    result = {
        "model": str(args.model),
        "rule": rule.to_dict(),
        "tomato_val_verdicts": verdict_shares(val),
        "tomato_test_verdicts": verdict_shares(test),
        "tomato_test_top1_among_diagnosed": float((predicted[diagnosed] == labels[diagnosed]).float().mean()),
        "negatives_verdicts": {name: {**verdict_shares(scored), "images": len(negatives[name])}
                               for name, scored in scored_negatives.items()},
        "comparison": {f"{args.version or scorer.version} (this bundle)": compare(scorer, fit, train_sample[1], val, test,
                                                                  scored_negatives, rule)},
    }
    if args.baseline:
        baseline = Scorer(args.baseline)
        b_fit, b_val, b_test, b_negatives = score_groups(baseline, tomato, train_sample[0], negatives)
        result["comparison"][f"{baseline.version} (no leaf head)"] = compare(baseline, b_fit, train_sample[1], b_val,
                                                                              b_test, b_negatives)
    args.out.mkdir(parents=True, exist_ok=True)
    plot_roc(result["comparison"], args.out / "roc_curves.png")
    (args.out / "reject.json").write_text(json.dumps(result, indent=2))
    if args.store:
        raw = torch.load(args.model, map_location="cpu", weights_only=True)
        raw["verdict_rule"] = rule.to_dict()
        if args.version:
            raw["version"] = args.version
        torch.save(raw, args.model)
    summary = {k: result[k] for k in ("rule", "tomato_test_verdicts", "tomato_test_top1_among_diagnosed", "negatives_verdicts")}
    summary["comparison"] = {m: {k: {x: r[x] for x in ("auroc_unseen_kinds", "false_accept_unseen_kinds")}
                                 for k, r in c.items()} for m, c in result["comparison"].items()}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
