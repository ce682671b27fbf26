"""The classifier: a timm backbone, global average pooling, and the seeds' head.

The backbone is also seen as a flat sequence of units (stem, each block, head conv) so the network can
be cut anywhere between units: the frozen prefix runs once into a cache and only the tail trains.
"""

from dataclasses import dataclass

import torch
from torch import nn

# The seeds' head: GAP -> Dense 128 relu -> Dropout 0.3 -> Dense n. Small enough not to overfit a few
# hundred images per class, big enough to re-mix features the ImageNet classifier never combined.
HEAD_HIDDEN_UNITS = 128
HEAD_DROPOUT = 0.3


@dataclass(frozen=True)
class HeadConfig:
    hidden_units: int = HEAD_HIDDEN_UNITS
    dropout: float = HEAD_DROPOUT


def make_head(in_features: int, n_classes: int, cfg: HeadConfig) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, cfg.hidden_units), nn.ReLU(inplace=True),
                         nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden_units, n_classes))


class _ForwardFeatures(nn.Module):
    """Fallback unit for architectures we cannot split: the whole forward_features in one piece."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)


def backbone_units(backbone: nn.Module) -> list[nn.Module]:
    """forward_features as a list of modules applied in order (checked against it in the tests)."""
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3
    from timm.models.resnet import ResNet

    if isinstance(backbone, EfficientNet):  # also MobileNetV2 and the EfficientNet-Lite family
        return [backbone.conv_stem, backbone.bn1, *[b for stage in backbone.blocks for b in stage],
                backbone.conv_head, backbone.bn2]
    if isinstance(backbone, MobileNetV3):
        return [backbone.conv_stem, backbone.bn1, *[b for stage in backbone.blocks for b in stage]]
    if isinstance(backbone, ResNet):
        return [backbone.conv1, backbone.bn1, backbone.act1, backbone.maxpool,
                *[b for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)
                  for b in layer]]
    return [_ForwardFeatures(backbone)]


class TransferModel(nn.Module):
    """backbone (timm, classifier removed) -> global average pool -> head. State dict keys stay timm's."""

    def __init__(self, backbone: nn.Module, n_classes: int, head_cfg: HeadConfig = HeadConfig()):
        super().__init__()
        self.backbone = backbone
        self.head = make_head(backbone.num_features, n_classes, head_cfg)
        self.units = backbone_units(backbone)  # a plain list: no second copy of the keys

    def forward_from(self, first_unit: int, x: torch.Tensor) -> torch.Tensor:
        """Logits from the input of unit `first_unit` (0 = the image)."""
        for unit in self.units[first_unit:]:
            x = unit(x)
        return self.head(pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(0, x)

    def prefixes(self, x: torch.Tensor, last_units: list[int]) -> list[torch.Tensor]:
        """Outputs of units[:n] for each n in `last_units`, in one pass; pooled when n is all of them."""
        outputs = {}
        for n in range(max(last_units) + 1):
            if n in last_units:
                outputs[n] = pool(x) if n == len(self.units) else x
            if n < len(self.units):
                x = self.units[n](x)
        return [outputs[n] for n in last_units]

    def prefix(self, x: torch.Tensor, last_unit: int) -> torch.Tensor:
        return self.prefixes(x, [last_unit])[0]


def pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling; a pooled (N, C) input passes through, so the head can run on cached features."""
    return x.mean(dim=(2, 3)) if x.dim() == 4 else x
