"""Which backbone layers train: the last N layers with parameters, or the last K timm blocks.

Either way the trainable range is a tail of the units, so everything before it is a cacheable prefix.
BatchNorm layers stay frozen (weights and running statistics) in every transfer phase: with a few
hundred images, re-estimating ImageNet statistics hurts, and a frozen prefix in eval mode is what makes
caching its outputs exact. LayerNorm (ViT, Swin, ConvNeXt) has no running statistics and trains like
any other layer inside the unfrozen range.
"""

from dataclasses import asdict, dataclass

from torch import nn

from transferlab.errors import UserError
from transferlab.models.transfer_model import backbone_name


def is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def layers_with_parameters(units: list[nn.Module]) -> list[tuple[int, nn.Module]]:
    """(unit index, layer) for every module that directly owns parameters, in forward order."""
    return [(i, m) for i, unit in enumerate(units) for m in unit.modules()
            if next(m.parameters(recurse=False), None) is not None]


@dataclass(frozen=True)
class UnfreezePlan:
    """What fine-tuning trains; `first_trainable_unit` is where the cached prefix ends."""

    layers_counted: int
    trainable_layers: int
    batchnorm_kept_frozen: int
    first_trainable_unit: int
    trainable_parameters: int
    total_parameters: int

    def to_dict(self) -> dict:
        return asdict(self)


def freeze_all(model: nn.Module) -> None:
    model.requires_grad_(False)


def _apply(model, chosen: list[tuple[int, nn.Module]]) -> UnfreezePlan:
    freeze_all(model.backbone)
    trainable = [(i, m) for i, m in chosen if not is_batchnorm(m)]
    for _, layer in trainable:
        layer.requires_grad_(True)
    model.head.requires_grad_(True)
    first = min((i for i, _ in trainable), default=len(model.units))
    return UnfreezePlan(layers_counted=len(chosen), trainable_layers=len(trainable),
                        batchnorm_kept_frozen=len(chosen) - len(trainable), first_trainable_unit=first,
                        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
                        total_parameters=sum(p.numel() for p in model.parameters()))


def _require_cuttable(model, option: str) -> None:
    reason = model.backbone_units.cannot_cut
    if reason:
        raise UserError(f"{option}: backbone '{backbone_name(model.backbone)}' cannot be cut between blocks "
                        f"({reason}); use --unfreeze-blocks 0 (frozen features only) or another backbone")


def unfreeze_last_layers(model, n_layers: int) -> UnfreezePlan:
    """Keras' `base.layers[-n:]`, counted over layers that own parameters (conv, norm, linear).

    Keras also counts activations, adds and paddings as layers, so its count is larger: Keras
    MobileNetV2's last 20 layers (blocks 15 and 16, Conv_1, its BN and ReLU) are 14 layers here.
    """
    layers = layers_with_parameters(model.units)
    if n_layers:
        _require_cuttable(model, f"--unfreeze-last {n_layers}")
    if not 0 <= n_layers <= len(layers):
        raise UserError(f"--unfreeze-last {n_layers} is out of range: this backbone has {len(layers)} layers "
                        "with parameters")
    return _apply(model, layers[len(layers) - n_layers:] if n_layers else [])


def unfreeze_last_blocks(model, n_blocks: int) -> UnfreezePlan:
    """fastai's freeze_to over timm's blocks (group_matcher): the last K blocks and all after them train.

    What follows the last block (conv_head/bn2, the final norm, the pooling's norm) trains with it, as
    timm groups it; the stem is not a block. K = 0 trains the head only.
    """
    if n_blocks:
        _require_cuttable(model, f"--unfreeze-blocks {n_blocks}")
    starts = model.backbone_units.block_starts
    if not 0 <= n_blocks <= len(starts):
        raise UserError(f"--unfreeze-blocks {n_blocks} is out of range: this backbone has {len(starts)} blocks")
    first = starts[len(starts) - n_blocks] if n_blocks else len(model.units)
    return _apply(model, [(i, m) for i, m in layers_with_parameters(model.units) if i >= first])


def freeze_backbone(model) -> UnfreezePlan:
    """The frozen phase: only the head trains."""
    return _apply(model, [])
