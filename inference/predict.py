"""The three named steps: preprocess (image -> tensor), forward (batch -> logits), postprocess (-> plain Python)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
from PIL import Image

from inference.bundle import ModelBundle
from inference.explain import class_activation_maps, class_weights, explanation
from model.verdict import decide, image_statistics, leaf_scores


@dataclass(frozen=True)
class ClassScore:
    class_name: str
    display_name: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    """Result for one image: the verdict, the top class, the top-k list and calibrated probabilities of all classes.

    `verdict` says whether to act on `class_name` ("diagnosed"), not to ("uncertain": a poor photo or a close
    call, `verdict_reason` says which) or that the photo is no tomato leaf at all ("not_tomato_leaf").
    """

    class_name: str
    display_name: str
    probability: float
    top_k: list[ClassScore]
    probabilities: dict[str, float]
    verdict: str = "diagnosed"
    leaf_score: float = 1.0  # 0..1: how much the image looks like the tomato-leaf photos the model knows
    verdict_reason: str | None = None
    explanation: dict[str, Any] | None = None  # only when asked for (inference/explain.py)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (built by hand: `dataclasses.asdict` deep-copies every value, once per response)."""
        return {
            "class_name": self.class_name,
            "display_name": self.display_name,
            "probability": self.probability,
            "top_k": [{"class_name": s.class_name, "display_name": s.display_name, "probability": s.probability}
                      for s in self.top_k],
            "probabilities": dict(self.probabilities),
            "verdict": self.verdict,
            "leaf_score": self.leaf_score,
            "verdict_reason": self.verdict_reason,
            **({"explanation": self.explanation} if self.explanation is not None else {}),
        }


def preprocess(bundle: ModelBundle, image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> normalised CHW float tensor, with the transform stored in the bundle."""
    return bundle.transform(image)


@dataclass(frozen=True)
class Scores:
    """What one forward yields for a batch, on the CPU: calibrated class probabilities (N, C), leaf scores (N,),
    the input statistics the verdict checks (N, 3) and, when explanations were asked for, the top class's
    class-activation map (N, h, w)."""

    probabilities: torch.Tensor
    leaf_scores: torch.Tensor
    statistics: torch.Tensor
    cams: torch.Tensor | None = None

    def row(self, i: int) -> "Scores":
        cams = None if self.cams is None else self.cams[i : i + 1]
        return Scores(self.probabilities[i : i + 1], self.leaf_scores[i : i + 1], self.statistics[i : i + 1], cams)


def forward(bundle: ModelBundle, batch: torch.Tensor, explain: bool = False) -> Scores:
    """One forward pass on the bundle's device; the verdict's inputs come from the same pass, and so does the
    feature map of the explanations when `explain` (without it, the forward is exactly the plain one)."""
    batch_on_device = batch.to(bundle.device, non_blocking=True)
    if explain:
        outputs, features = bundle.engine.explain(batch_on_device)
    else:
        outputs, features = bundle.engine(batch_on_device), None
    with torch.inference_mode():
        outputs = outputs.float().cpu()
        probabilities = torch.softmax(outputs[:, : len(bundle.class_names)] / bundle.temperature, dim=1)
        cams = None
        if features is not None:
            cams = class_activation_maps(features.float().cpu(), class_weights(bundle.network), probabilities.argmax(1))
        return Scores(probabilities, leaf_scores(bundle.verdict_rule, outputs, len(bundle.class_names), probabilities),
                      image_statistics(batch.cpu(), bundle.preprocess.mean, bundle.preprocess.std), cams)


def postprocess(bundle: ModelBundle, scores: Scores, top_k: int = 3) -> list[Prediction]:
    """Scores of a batch -> one `Prediction` per row, plain Python only."""
    k = max(1, min(top_k, len(bundle.class_names)))
    results = []
    for row, leaf, stats in zip(scores.probabilities.tolist(), scores.leaf_scores.tolist(), scores.statistics.tolist()):
        order = sorted(range(len(row)), key=row.__getitem__, reverse=True)
        top = [ClassScore(bundle.class_names[i], bundle.display_names[i], row[i]) for i in order[:k]]
        verdict, reason = decide(bundle.verdict_rule, leaf, row[order[0]], stats)
        results.append(
            Prediction(
                class_name=top[0].class_name,
                display_name=top[0].display_name,
                probability=top[0].probability,
                top_k=top,
                probabilities={name: row[i] for i, name in enumerate(bundle.class_names)},
                verdict=verdict,
                leaf_score=leaf,
                verdict_reason=reason,
            )
        )
    return results


def explain_prediction(bundle: ModelBundle, prediction: Prediction, tensor: torch.Tensor, cam: torch.Tensor,
                       overlay: bool = True) -> Prediction:
    """`prediction` with its `explanation` (grid, shape, overlay PNG) for the preprocessed `tensor`."""
    return replace(prediction, explanation=explanation(tensor, cam, prediction.class_name, bundle.preprocess.mean,
                                                       bundle.preprocess.std, overlay))


def predict(bundle: ModelBundle, images: Sequence[Image.Image], top_k: int = 3,
            explain: bool = False) -> list[Prediction]:
    """Classify RGB images with ONE batched forward; `explain` adds each image's class-activation map."""
    if not images:
        return []
    batch = torch.stack([preprocess(bundle, image) for image in images])
    scores = forward(bundle, batch, explain)
    predictions = postprocess(bundle, scores, top_k)
    if scores.cams is not None:
        predictions = [explain_prediction(bundle, p, t, c) for p, t, c in zip(predictions, batch, scores.cams)]
    return predictions
