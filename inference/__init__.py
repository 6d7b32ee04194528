"""Inference core: load the bundle once, decode uploads, batch, predict. Returns plain Python."""
from inference.batcher import BatchedResult, MicroBatcher, QueueFull
from inference.bundle import DEFAULT_BUNDLE_PATH, ModelBundle, load_bundle
from inference.images import InvalidImage, decode_image
from inference.predict import ClassScore, Prediction, predict, preprocess

__all__ = [
    "BatchedResult",
    "ClassScore",
    "DEFAULT_BUNDLE_PATH",
    "InvalidImage",
    "MicroBatcher",
    "ModelBundle",
    "Prediction",
    "QueueFull",
    "decode_image",
    "load_bundle",
    "predict",
    "preprocess",
]
