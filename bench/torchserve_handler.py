"""TorchServe handler for the benchmark: the stock `image_classifier` with ONLY its transform replaced.

The stock handler preprocesses ImageNet-style (resize 256, crop 224, ImageNet mean/std). Our bundle was
trained with its own sizes and normalisation, so this subclass reads them from `preprocess.json` (written
into the .mar by bench/systems.py from the bundle) and builds the equivalent torchvision transform.
Decoding (full-size `Image.open`, no JPEG draft), batching, inference and postprocessing stay stock.
"""
import json
import os

from torchvision import transforms
from ts.torch_handler.image_classifier import ImageClassifier


class BundleImageClassifier(ImageClassifier):
    def initialize(self, context):
        super().initialize(context)
        with open(os.path.join(context.system_properties["model_dir"], "preprocess.json")) as fh:
            cfg = json.load(fh)
        self.image_processing = transforms.Compose(
            [
                transforms.Resize(cfg["resize_size"]),
                transforms.CenterCrop(cfg["image_size"]),
                transforms.ToTensor(),
                transforms.Normalize(mean=cfg["mean"], std=cfg["std"]),
            ]
        )
