"""The classifier: a timm backbone with timm's own pooling, then the seeds' head.

For caching, the backbone is also a flat sequence of units: stem parts, each block, post-block layers,
and last the pooling (`forward_head(pre_logits=True)`). The frozen prefix units[:cut] runs once into a
cache; only units[cut:] and the head train. The units are found by tracing `forward_features` once on a
probe image and are checked against it; a backbone whose forward does work between its modules stays
one unit, which the frozen phase can still use but fine-tuning cannot cut.
"""

import re
from dataclasses import dataclass
from typing import Callable

import torch
from timm.models import group_parameters
from torch import nn

# The seeds' head: GAP -> Dense 128 relu -> Dropout 0.3 -> Dense n. Small enough not to overfit a few
# hundred images per class, big enough to re-mix features the ImageNet classifier never combined.
HEAD_HIDDEN_UNITS = 128
HEAD_DROPOUT = 0.3

# forward_features steps that timm writes as methods, not modules (ViT adds class token + position
# embedding in `_pos_embed`); each becomes a unit that owns the backbone's own parameters.
METHOD_STEPS = ("_pos_embed",)


@dataclass(frozen=True)
class HeadConfig:
    hidden_units: int = HEAD_HIDDEN_UNITS
    dropout: float = HEAD_DROPOUT


def make_head(in_features: int, n_classes: int, cfg: HeadConfig) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, cfg.hidden_units), nn.ReLU(inplace=True),
                         nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden_units, n_classes))


def pooled_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, C) features the way timm pools them: avg for CNNs, class token or avg + fc_norm for ViT,
    NHWC pooling for Swin, head norm after the pool for ConvNeXt."""
    return backbone.forward_head(backbone.forward_features(x), pre_logits=True)


def pooled_width(backbone: nn.Module) -> int:
    """C of `pooled_features`: MobileNetV3's head conv makes it differ from `num_features`."""
    return getattr(backbone, "head_hidden_size", None) or backbone.num_features


def backbone_name(backbone: nn.Module) -> str:
    return (getattr(backbone, "pretrained_cfg", None) or {}).get("architecture") or type(backbone).__name__


@dataclass(frozen=True)
class BackboneUnits:
    """forward_features then the pooling as modules applied in order, and where each timm block starts.

    `cannot_cut` says why the backbone is a single unit (whole backbone -> pooled features); then only
    the frozen phase is possible.
    """

    units: list[nn.Module]
    block_starts: list[int]  # unit index where each block of group_matcher(coarse=False) starts
    cannot_cut: str | None = None


class _MethodStep(nn.Module):
    """A METHOD_STEPS method as a unit; it holds the backbone's own parameters (cls_token, pos_embed)."""

    def __init__(self, backbone: nn.Module, method: str):
        super().__init__()
        for name, parameter in backbone.named_parameters(recurse=False):
            self.register_parameter(name, parameter)
        self.method = getattr(type(backbone), method).__get__(backbone)  # the class's, also while traced

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method(x)


class _Pooling(nn.Module):
    """`forward_head(pre_logits=True)` as the last unit; holds what it calls (ConvNeXt's head.norm)."""

    def __init__(self, backbone: nn.Module, parts: dict[str, nn.Module]):
        super().__init__()
        self.parts = nn.ModuleDict({name.replace(".", "_"): m for name, m in parts.items()})
        self.forward_head = backbone.forward_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(x, pre_logits=True)


class _WholeBackbone(nn.Module):
    """The single unit of a backbone that cannot be cut: image -> pooled features."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pooled_features(self.backbone, x)


@dataclass(frozen=True)
class _Call:
    name: str
    module: nn.Module
    args: tuple
    kwargs: dict
    output: object


def block_of_parameter(backbone: nn.Module) -> dict[str, int | None]:
    """Parameter name -> its block's group in timm's fine grouping; None for stem, head, or no grouping.

    Uses only the `blocks` matchers of group_matcher(), so timm's post-block layers (conv_head, final
    norm: MATCH_PREV_GROUP) join the last block. A few models (CaiT, Inception) give a function instead
    of regexes; by timm's convention its ordinal 0 is the stem and inf the head.
    """
    names = [name for name, _ in backbone.named_parameters()]
    matcher = backbone.group_matcher(coarse=False) if hasattr(backbone, "group_matcher") else {}
    if callable(matcher):
        in_blocks = {n for n in names if matcher(n) not in (0, float("inf"))}
    elif matcher.get("blocks") is not None:
        spec = matcher["blocks"]
        patterns = [spec] if isinstance(spec, str) else [pattern for pattern, _ in spec]
        in_blocks = {n for n in names if any(re.match(p, n) for p in patterns)}
        matcher = {"blocks": spec}
    else:
        return dict.fromkeys(names)
    group = group_parameters(backbone, matcher, reverse=True)
    return {n: group[n] if n in in_blocks else None for n in names}


def _candidates(module: nn.Module, prefix: str, blocks_in: Callable[[nn.Module], set]) -> dict[str, nn.Module]:
    """Modules that may be units: a child spanning several blocks is split into its children."""
    found = {}
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        is_container = next(child.children(), None) is not None and next(child.parameters(False), None) is None
        if is_container and len(blocks_in(child)) > 1:
            found |= _candidates(child, f"{full}.", blocks_in)
        else:
            found[full] = child
    return found


def _trace(fn: Callable, x: torch.Tensor, modules: dict[str, nn.Module]) -> tuple[list[_Call], object]:
    """fn(x), recording the calls of `modules` that happen outside any other of them, in order."""
    calls, depth, handles = [], [0], []

    def enter(module, args, kwargs):
        depth[0] += 1

    def leave(name):
        def hook(module, args, kwargs, output):
            depth[0] -= 1
            if depth[0] == 0:
                calls.append(_Call(name, module, args, kwargs, output))
        return hook

    for name, module in modules.items():
        handles += [module.register_forward_pre_hook(enter, with_kwargs=True),
                    module.register_forward_hook(leave(name), with_kwargs=True)]
    try:
        out = fn(x)
    finally:
        for handle in handles:
            handle.remove()
    return calls, out


def _chain_break(calls: list[_Call], x: torch.Tensor, out: object) -> str | None:
    """Why the recorded calls are not exactly forward_features (each takes the previous output alone)."""
    expected = x
    for call in calls:
        if call.kwargs or len(call.args) != 1 or call.args[0] is not expected:
            return f"forward_features does work between modules before '{call.name}'"
        expected = call.output
    if out is not expected:
        return "forward_features does work after its last module"
    if len({id(c.module) for c in calls}) != len(calls):
        return "forward_features runs a module twice"
    return None


def _probe_image(backbone: nn.Module) -> torch.Tensor:
    """A seeded random image of the size the backbone expects (a ViT/Swin built for 64 px says so)."""
    channels, *size = (getattr(backbone, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))
    fixed = getattr(getattr(backbone, "patch_embed", None), "img_size", None)
    height, width = (fixed, fixed) if isinstance(fixed, int) else (fixed or size)
    parameter = next(backbone.parameters())
    return torch.randn(1, channels, height, width, generator=torch.Generator().manual_seed(0)).to(parameter)


@torch.no_grad()
def backbone_units(backbone: nn.Module) -> BackboneUnits:
    """Trace forward_features into units on a probe image and check them against it (eval mode)."""
    modes = {m: m.training for m in backbone.modules()}
    backbone.eval()
    try:
        return _traced_units(backbone, _probe_image(backbone))
    finally:
        for module, training in modes.items():
            module.training = training


def _traced_units(backbone: nn.Module, x: torch.Tensor) -> BackboneUnits:
    def cannot_cut(reason: str) -> BackboneUnits:
        return BackboneUnits([_WholeBackbone(backbone)], [], reason)

    block_of = block_of_parameter(backbone)
    name_of = {id(p): n for n, p in backbone.named_parameters()}

    def blocks_in(module: nn.Module) -> set[int | None]:
        return {block_of[name_of[id(p)]] for p in module.parameters()}

    candidates = _candidates(backbone, "", blocks_in)
    steps = {name: _MethodStep(backbone, name) for name in METHOD_STEPS if hasattr(type(backbone), name)}
    if next(backbone.parameters(recurse=False), None) is not None and not steps:
        return cannot_cut("the backbone uses parameters of its own outside any module")
    backbone.__dict__.update(steps)  # an instance attribute shadows the method, so the trace sees it
    try:
        calls, features = _trace(backbone.forward_features, x, candidates | steps)
    finally:
        for name in steps:
            del backbone.__dict__[name]
    reason = _chain_break(calls, x, features)
    if reason:
        return cannot_cut(reason)
    head_calls, _ = _trace(lambda f: backbone.forward_head(f, pre_logits=True), features, candidates)
    units = [c.module for c in calls] + [_Pooling(backbone, {c.name: c.module for c in head_calls})]
    y = x.clone()
    for unit in units:
        y = unit(y)
    if not torch.allclose(y, pooled_features(backbone, x), rtol=1e-3, atol=1e-4):
        return cannot_cut("forward_features changes tensors in place between modules")
    first_unit_of_block: dict[int, int] = {}
    for i, unit in enumerate(units):
        for block in blocks_in(unit) - {None}:
            first_unit_of_block.setdefault(block, i)
    return BackboneUnits(units, [first_unit_of_block[b] for b in sorted(first_unit_of_block)])


# Bump when the units change meaning: a cut index then names other tensors than the cached/exported ones.
UNITS_LAYOUT = "units-v2"  # v2: units traced from timm's forward_features, pooling as the last unit


class TransferModel(nn.Module):
    """backbone (timm, classifier removed, pooling kept) -> head. State dict keys stay timm's (backbone.*)."""

    def __init__(self, backbone: nn.Module, n_classes: int, head_cfg: HeadConfig = HeadConfig()):
        super().__init__()
        self.backbone = backbone
        self.head = make_head(pooled_width(backbone), n_classes, head_cfg)
        self.backbone_units = backbone_units(backbone)  # three passes of one probe image

    @property
    def units(self) -> list[nn.Module]:
        return self.backbone_units.units  # a plain list: no second copy of the state dict keys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(pooled_features(self.backbone, x))

    def forward_from(self, first_unit: int, x: torch.Tensor) -> torch.Tensor:
        """Logits from the input of unit `first_unit` (0 = the image, len(units) = pooled features)."""
        for unit in self.units[first_unit:]:
            x = unit(x)
        return self.head(x)

    def prefixes(self, x: torch.Tensor, last_units: list[int]) -> list[torch.Tensor]:
        """Outputs of units[:n] for each n in `last_units`, in one pass; n = len(units) is pooled features.

        A kept output is cloned: the next unit may work in place (ResNet's act1).
        """
        outputs = {}
        for n in range(max(last_units) + 1):
            if n < len(self.units):
                if n in last_units:
                    outputs[n] = x.clone()
                x = self.units[n](x)
            else:
                outputs[n] = x
        return [outputs[n] for n in last_units]

    def prefix(self, x: torch.Tensor, last_unit: int) -> torch.Tensor:
        return self.prefixes(x, [last_unit])[0]
