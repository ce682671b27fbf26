"""Which backbone layers train. Counted over layers that own parameters, in forward order.

BatchNorm layers stay frozen (weights and running statistics) in every transfer phase: with a few
hundred images, re-estimating ImageNet statistics hurts, and a frozen prefix in eval mode is what makes
caching its outputs exact.
"""

from dataclasses import asdict, dataclass

from torch import nn

from transferlab.errors import UserError


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


def unfreeze_last_layers(model, n_layers: int) -> UnfreezePlan:
    """Keras' `base.layers[-n:]`, counted over layers with parameters (conv, BN, linear)."""
    layers = layers_with_parameters(model.units)
    if not 0 <= n_layers <= len(layers):
        raise UserError(f"--unfreeze-last {n_layers} is out of range: this backbone has {len(layers)} layers "
                        "with parameters")
    return _apply(model, layers[len(layers) - n_layers:] if n_layers else [])


def unfreeze_last_blocks(model, n_blocks: int) -> UnfreezePlan:
    """fastai's freeze_to over the backbone's units (stem, each block, head conv count one each)."""
    if not 0 <= n_blocks <= len(model.units):
        raise UserError(f"--unfreeze-blocks {n_blocks} is out of range: this backbone has "
                        f"{len(model.units)} blocks")
    first = len(model.units) - n_blocks
    return _apply(model, [(i, m) for i, m in layers_with_parameters(model.units) if i >= first])


def freeze_backbone(model) -> UnfreezePlan:
    """The frozen phase: only the head trains."""
    return _apply(model, [])
