"""The reject option: turn one forward's outputs into a verdict, with thresholds that travel in the bundle.

A classifier trained on ten tomato conditions answers every picture with one of them. The verdict says whether
that answer should be acted on:

- "not_tomato_leaf": the leaf score (does this look like the tomato-leaf photos the network knows? From 2.2.0 a
  logistic combination of the energy of its disease logits, which outlier exposure trained to be low on anything
  else, and the leaf head's logit; up to 2.1.0 the energy alone) is below `leaf_reject`;
- "uncertain": it looks like a leaf, but the photo is poor (greyscale, dark, blurred: simple statistics of the
  network's own input tensor), the leaf score is only middling, or the top class is not clearly ahead;
- "diagnosed": none of the above.

Every number comes from the bundle (`VerdictRule`, chosen on validation by `model.reject`), none from the server
or the page. A 1.x bundle has no leaf head and no stored rule: it gets `LEGACY_RULE` (documented in the README).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

NOT_A_TOMATO_LEAF = "not_tomato_leaf"
VERDICTS = ("diagnosed", "uncertain", NOT_A_TOMATO_LEAF)
REASONS = ("not_leaf_like", "greyscale", "dark", "blurred", "unclear_leaf", "classes_close")


@dataclass(frozen=True)
class VerdictRule:
    """Thresholds of the verdict; stored in the bundle under "verdict_rule"."""

    leaf_source: str = "energy"  # "energy": sigmoid(energy_scale * logsumexp(disease logits) + energy_shift);
    #                              "energy_and_leaf_head": the same plus leaf_head_weight * the leaf head's logit;
    #                              "leaf_head": sigmoid of the extra output; "top_probability" (1.x bundles)
    energy_scale: float = 1.0  # logistic fit of "tomato photo vs not" on the energy (and leaf logit) (model.reject)
    energy_shift: float = 0.0
    leaf_head_weight: float = 0.0
    leaf_reject: float = 0.5  # leaf score below this: not_tomato_leaf
    leaf_accept: float = 0.5  # leaf score below this (and not rejected): uncertain, "unclear_leaf"
    min_probability: float = 0.6  # calibrated top-1 probability below this: uncertain, "classes_close"
    min_saturation: float = 0.0  # mean chroma (max-min of RGB, 0..1) below this: uncertain, "greyscale"
    min_brightness: float = 0.0  # mean intensity (0..1) below this: uncertain, "dark"
    min_sharpness: float = 0.0  # mean |Laplacian| of the intensity (0..1 scale) below this: uncertain, "blurred"
    chosen_by: str = ""  # the command (and data) that chose these numbers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VerdictRule":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


# 1.x bundles were trained without a leaf head: they cannot say "not a tomato leaf", so their verdict is the
# old page's low-confidence rule (top-1 below 0.6: uncertain) plus a greyscale check, and the leaf score is
# the top-1 probability (the only evidence such a model has).
LEGACY_RULE = VerdictRule(leaf_source="top_probability", leaf_reject=0.0, leaf_accept=0.0, min_probability=0.6,
                          min_saturation=0.02, chosen_by="default rule for 1.x bundles (model/verdict.py)")


def image_statistics(batch: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(N, 3) saturation, brightness and sharpness of normalised network inputs (N, 3, H, W), each on a 0..1 scale.

    Computed on the tensor the network sees (already resized), so the numbers do not depend on the upload's size,
    and cheaply: a few elementwise passes over 3 x 160 x 160 values, far below the forward's cost."""
    batch = batch.float()
    mean_t = torch.tensor(mean, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    pixels = (batch * std_t + mean_t).clamp_(0, 1)
    saturation = (pixels.amax(1) - pixels.amin(1)).mean((1, 2))
    grey = pixels.mean(1, keepdim=True)
    brightness = grey.mean((1, 2, 3))
    laplacian = (4 * grey[..., 1:-1, 1:-1] - grey[..., :-2, 1:-1] - grey[..., 2:, 1:-1]
                 - grey[..., 1:-1, :-2] - grey[..., 1:-1, 2:])
    sharpness = laplacian.abs().mean((1, 2, 3))
    return torch.stack([saturation, brightness, sharpness], dim=1)


def leaf_scores(rule: VerdictRule, outputs: torch.Tensor, classes: int, probabilities: torch.Tensor) -> torch.Tensor:
    """(N,) leaf score in [0, 1] from the network's outputs (`classes` disease logits, then the leaf logit when the
    network has a leaf head) or, for 1.x bundles, the top-1 probability."""
    if rule.leaf_source in ("energy", "energy_and_leaf_head"):
        logit = rule.energy_scale * torch.logsumexp(outputs[:, :classes].float(), dim=1) + rule.energy_shift
        if rule.leaf_source == "energy_and_leaf_head":
            logit = logit + rule.leaf_head_weight * outputs[:, classes].float()
        return torch.sigmoid(logit)
    if rule.leaf_source == "leaf_head":
        return torch.sigmoid(outputs[:, classes].float())
    return probabilities.max(1).values


def decide(rule: VerdictRule, leaf_score: float, top_probability: float, statistics: list[float]) -> tuple[str, str | None]:
    """(verdict, reason) for one image; the reason names the first check that failed (None when diagnosed)."""
    saturation, brightness, sharpness = statistics
    if leaf_score < rule.leaf_reject:
        return NOT_A_TOMATO_LEAF, "not_leaf_like"
    if saturation < rule.min_saturation:
        return "uncertain", "greyscale"
    if brightness < rule.min_brightness:
        return "uncertain", "dark"
    if sharpness < rule.min_sharpness:
        return "uncertain", "blurred"
    if leaf_score < rule.leaf_accept:
        return "uncertain", "unclear_leaf"
    if top_probability < rule.min_probability:
        return "uncertain", "classes_close"
    return "diagnosed", None
