"""Which backbone layers train: the last N layers with parameters, or the last K timm blocks.

Either way the trainable range is a tail of the units, so everything before it is a cacheable prefix.
BatchNorm layers stay frozen (weights and running statistics) in every transfer phase: with a few
hundred images, re-estimating ImageNet statistics hurts, and a frozen prefix in eval mode is what makes
caching its outputs exact. LayerNorm (ViT, Swin, ConvNeXt) has no running statistics and trains like
any other layer inside the unfrozen range.
"""

from dataclasses import asdict, dataclass, field

from torch import nn

from transferlab.errors import UserError
from transferlab.models.transfer_model import backbone_name


# keras.applications.MobileNetV2 builds its BatchNorms with momentum=0.999: running statistics move by 0.1%
# a step. PyTorch counts the other way (new = (1 - m) * old + m * batch), so Keras' 0.999 is 0.001 here;
# timm's 0.1 would replace the ImageNet statistics with a few fine-tuning batches' within ~20 steps.
KERAS_BATCHNORM_MOMENTUM = 0.001


def is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def changing_state_keys(model: nn.Module, train_modules: list[nn.Module]) -> set[str]:
    """The state_dict entries a phase can change: trainable parameters, and the buffers (BatchNorm
    statistics) of the modules it runs in train mode. Everything else stays as the phase found it. Buffers a
    module keeps out of its state_dict (timm's Swin, LeViT and BEiT hold index tables so) are not entries."""
    keys = {name for name, p in model.named_parameters() if p.requires_grad}
    training = {id(m) for m in train_modules}
    for name, module in model.named_modules():
        if id(module) in training:
            keys.update(buffer for buffer, _ in module.named_buffers(prefix=name))
    return keys & model.state_dict().keys()


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
    # BatchNorm layers that train (Keras' semantics, --train-batchnorm): in train mode during fine-tuning
    train_mode_modules: list[nn.Module] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "train_mode_modules"} | {
            "batchnorm_trained": len(self.train_mode_modules)}


def freeze_all(model: nn.Module) -> None:
    model.requires_grad_(False)


def _apply(model, chosen: list[tuple[int, nn.Module]], train_batchnorm: bool = False) -> UnfreezePlan:
    freeze_all(model.backbone)
    trainable = [(i, m) for i, m in chosen if train_batchnorm or not is_batchnorm(m)]
    for _, layer in trainable:
        layer.requires_grad_(True)
        if is_batchnorm(layer):
            layer.momentum = KERAS_BATCHNORM_MOMENTUM
    model.head.requires_grad_(True)
    first = min((i for i, _ in trainable), default=len(model.units))
    return UnfreezePlan(layers_counted=len(chosen), trainable_layers=len(trainable),
                        batchnorm_kept_frozen=len(chosen) - len(trainable), first_trainable_unit=first,
                        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
                        total_parameters=sum(p.numel() for p in model.parameters()),
                        train_mode_modules=[m for _, m in trainable if is_batchnorm(m)])


def _require_cuttable(model, option: str) -> None:
    reason = model.backbone_units.cannot_cut
    if reason:
        raise UserError(f"{option}: backbone '{backbone_name(model.backbone)}' cannot be cut between blocks "
                        f"({reason}); use --unfreeze-blocks 0 (frozen features only) or another backbone")


def _last(model, items: list, n: int, option: str, what: str) -> list:
    """The last `n` of `items` (layers or block starts), after the checks every unfreeze option shares."""
    if n:
        _require_cuttable(model, f"{option} {n}")
    if not 0 <= n <= len(items):
        raise UserError(f"{option} {n} is out of range: this backbone has {len(items)} {what}")
    return items[len(items) - n:] if n else []


def unfreeze_last_layers(model, n_layers: int, train_batchnorm: bool = False) -> UnfreezePlan:
    """The last N layers that own parameters (conv, norm, linear).

    Keras also counts activations, adds and paddings as layers, so its count is larger: Keras
    MobileNetV2's last 20 layers (blocks 15 and 16, Conv_1, its BN and ReLU) are 14 layers here; for
    Keras' count use `unfreeze_last_keras_layers`.
    """
    layers = layers_with_parameters(model.units)
    chosen = _last(model, layers, n_layers, "--unfreeze-last", "layers with parameters")
    return _apply(model, chosen, train_batchnorm)


def unfreeze_last_blocks(model, n_blocks: int, train_batchnorm: bool = False) -> UnfreezePlan:
    """fastai's freeze_to over timm's blocks (group_matcher): the last K blocks and all after them train.

    What follows the last block (conv_head/bn2, the final norm, the pooling's norm) trains with it, as
    timm groups it; the stem is not a block. K = 0 trains the head only.
    """
    starts = _last(model, model.backbone_units.block_starts, n_blocks, "--unfreeze-blocks", "blocks")
    first = starts[0] if starts else len(model.units)
    return _apply(model, [(i, m) for i, m in layers_with_parameters(model.units) if i >= first], train_batchnorm)


KERAS_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
                     nn.LeakyReLU, nn.ELU, nn.PReLU)


def keras_layers(units: list[nn.Module]) -> list[tuple[int, nn.Module | None]]:
    """The layers Keras would list for these units, in forward order: (unit index, module or None for an add).

    Keras counts every convolution, normalisation, dense layer, activation and residual add; a timm block
    with a skip connection (`has_skip`) ends with one add. Keras' ZeroPadding layers (four in MobileNetV2,
    none in the TF 'same'-padded EfficientNets) have no module here and are not counted.
    """
    layers: list[tuple[int, nn.Module | None]] = []
    for i, unit in enumerate(units):
        for m in unit.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.LayerNorm, nn.modules.batchnorm._BatchNorm,
                              *KERAS_ACTIVATIONS)):
                layers.append((i, m))
        if getattr(unit, "has_skip", False):
            layers.append((i, None))
    return layers


def unfreeze_last_keras_layers(model, n_layers: int, train_batchnorm: bool = False) -> UnfreezePlan:
    """What Keras' `for layer in base.layers[:-n]: layer.trainable = False` leaves trainable (seed 002: 20).

    For MobileNetV2 the last 20 Keras layers are blocks 15 and 16 (expand, depthwise, project convolutions
    with their BatchNorms and ReLU6s, block 15's add), Conv_1, its BatchNorm and out_relu: 14 layers with
    parameters. Seed 000's `fine_tune_at = 100` of 154 layers is Keras' last 54, our last 53 (block_13_pad).
    """
    tail = _last(model, keras_layers(model.units), n_layers, "--unfreeze-keras-layers", "Keras-style layers")
    chosen = [(i, m) for i, m in tail if m is not None and next(m.parameters(recurse=False), None) is not None]
    return _apply(model, chosen, train_batchnorm)


def freeze_backbone(model) -> UnfreezePlan:
    """The frozen phase: only the head trains."""
    return _apply(model, [])


def unfreeze(model, kind: str, count: int, train_batchnorm: bool = False) -> UnfreezePlan:
    """Fine-tuning's trainable tail, as a recipe's `unfreeze` names it: the last `count` layers, blocks or
    Keras layers."""
    last = {"layers": unfreeze_last_layers, "blocks": unfreeze_last_blocks, "keras": unfreeze_last_keras_layers}
    return last[kind](model, count, train_batchnorm=train_batchnorm)


def set_train_mode(module: nn.Module, train_modules: list[nn.Module]) -> None:
    """Everything in eval mode (frozen BatchNorm keeps its statistics) except what the phase trains."""
    module.eval()
    for m in train_modules:
        m.train()
