"""The three named steps: preprocess (image -> tensor), forward (batch -> logits), postprocess (-> plain Python)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from PIL import Image

from inference.bundle import ModelBundle


@dataclass(frozen=True)
class ClassScore:
    class_name: str
    display_name: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    """Result for one image: the top class, the top-k list and calibrated probabilities of all classes."""

    class_name: str
    display_name: str
    probability: float
    top_k: list[ClassScore]
    probabilities: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (built by hand: `dataclasses.asdict` deep-copies every value, once per response)."""
        return {
            "class_name": self.class_name,
            "display_name": self.display_name,
            "probability": self.probability,
            "top_k": [{"class_name": s.class_name, "display_name": s.display_name, "probability": s.probability}
                      for s in self.top_k],
            "probabilities": dict(self.probabilities),
        }


def preprocess(bundle: ModelBundle, image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> normalised CHW float tensor, with the transform stored in the bundle."""
    return bundle.transform(image)


def forward(bundle: ModelBundle, batch: torch.Tensor) -> torch.Tensor:
    """One forward pass on the bundle's device; returns calibrated probabilities on the CPU."""
    logits = bundle.engine(batch.to(bundle.device, non_blocking=True))
    with torch.inference_mode():
        return torch.softmax(logits.float() / bundle.temperature, dim=1).cpu()


def postprocess(bundle: ModelBundle, probabilities: torch.Tensor, top_k: int = 3) -> list[Prediction]:
    """Probabilities tensor -> one `Prediction` per row, plain Python only."""
    k = max(1, min(top_k, len(bundle.class_names)))
    results = []
    for row in probabilities.tolist():
        order = sorted(range(len(row)), key=row.__getitem__, reverse=True)
        scores = [ClassScore(bundle.class_names[i], bundle.display_names[i], row[i]) for i in order[:k]]
        results.append(
            Prediction(
                class_name=scores[0].class_name,
                display_name=scores[0].display_name,
                probability=scores[0].probability,
                top_k=scores,
                probabilities={name: row[i] for i, name in enumerate(bundle.class_names)},
            )
        )
    return results


def predict(bundle: ModelBundle, images: Sequence[Image.Image], top_k: int = 3) -> list[Prediction]:
    """Classify RGB images with ONE batched forward."""
    if not images:
        return []
    batch = torch.stack([preprocess(bundle, image) for image in images])
    return postprocess(bundle, forward(bundle, batch), top_k)
