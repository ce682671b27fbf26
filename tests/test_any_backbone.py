"""Any timm family is cut into units through timm's own structure, or says it cannot be cut.

Tiny random-init models (timm's test_* models and shrunken Swin/ViT) at 32 px, so each runs in a second.
"""

from dataclasses import dataclass, field

import pytest
import torch
import timm

from transferlab.errors import UserError
from transferlab.models.freezing import (freeze_backbone, is_batchnorm, unfreeze_last_blocks,
                                         unfreeze_last_layers)
from transferlab.models.transfer_model import TransferModel, pooled_features

N_CLASSES = 3


@dataclass(frozen=True)
class Family:
    name: str
    first_of_last_two_blocks: str          # module where the last two blocks start
    last_two_blocks_and_after: tuple[str, ...]  # parameter name prefixes that --unfreeze-blocks 2 trains
    kwargs: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.name}{'-' + self.kwargs['global_pool'] if 'global_pool' in self.kwargs else ''}"


FAMILIES = [
    Family("test_resnet", "layer3", ("layer3.", "layer4.")),  # one block per stage: the stage is the unit
    Family("mobilenetv3_small_050", "blocks.4.2", ("blocks.4.2.", "blocks.5.0.", "conv_head.", "norm_head.")),
    Family("test_convnext", "stages.3.downsample", ("stages.3.", "norm_pre.", "head.norm.")),
    Family("test_vit", "blocks.4", ("blocks.4.", "blocks.5.", "norm."), dict(img_size=32)),
    Family("test_vit", "blocks.4", ("blocks.4.", "blocks.5.", "fc_norm."), dict(img_size=32, global_pool="avg")),
    Family("swin_tiny_patch4_window7_224", "layers.1.downsample", ("layers.1.", "norm."),
           dict(embed_dim=24, depths=(2, 2), num_heads=(1, 2), img_size=32, window_size=4)),
    Family("tf_efficientnet_lite0", "blocks.5.3", ("blocks.5.3.", "blocks.6.0.", "conv_head.", "bn2.")),
]


def build(family: Family) -> TransferModel:
    torch.manual_seed(0)
    return TransferModel(timm.create_model(family.name, pretrained=False, num_classes=0, **family.kwargs),
                         N_CLASSES).eval()


def images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", FAMILIES, ids=str)
def test_units_are_forward_features_then_timm_pooling_and_every_cut_is_exact(family):
    model, x = build(family), images()
    backbone = model.backbone
    with torch.no_grad():
        features, logits = backbone.forward_features(x), model(x)
        y = x
        for unit in model.units[:-1]:
            y = unit(y)
        assert torch.equal(y, features)
        assert torch.equal(model.units[-1](y), backbone.forward_head(features, pre_logits=True))
        assert logits.shape == (2, N_CLASSES)
        end, mid = len(model.units), model.units.index(backbone.get_submodule(family.first_of_last_two_blocks))
        assert all(torch.equal(a, model.prefix(x, cut)) for a, cut in zip(model.prefixes(x, [end, mid]), [end, mid]))
        cuts = list(range(end + 1))
        every_cut = model.prefixes(x, cuts)
        assert every_cut[-1].shape == (2, model.head[0].in_features)
        for cut, prefix in zip(cuts, every_cut):
            assert torch.allclose(model.forward_from(cut, prefix), logits, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES, ids=str)
def test_unfreeze_last_blocks_trains_exactly_the_tail_and_the_cached_prefix_stays_put(family):
    model, x = build(family), images(4)
    plan = unfreeze_last_blocks(model, 2)
    backbone = model.backbone
    assert plan.first_trainable_unit == model.units.index(backbone.get_submodule(family.first_of_last_two_blocks))
    batchnorm = {f"{name}.{p}" for name, m in backbone.named_modules() if is_batchnorm(m)
                 for p, _ in m.named_parameters(recurse=False)}
    expected = {n for n, _ in backbone.named_parameters()
                if n.startswith(family.last_two_blocks_and_after) and n not in batchnorm}
    assert {n for n, p in backbone.named_parameters() if p.requires_grad} == expected
    assert all(p.requires_grad for p in model.head.parameters())

    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model.head.train()  # as the training loop does: the backbone (and its BatchNorm) stays in eval mode
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    with torch.no_grad():
        cached = model.prefix(x, plan.first_trainable_unit)
    torch.nn.functional.cross_entropy(model.forward_from(plan.first_trainable_unit, cached),
                                      torch.arange(4) % N_CLASSES).backward()
    optimizer.step()
    changed = {k for k, v in backbone.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= expected


@pytest.mark.parametrize("name, kwargs", [("test_vit_relpos", dict(img_size=32)),
                                          ("eva02_tiny_patch14_224", dict(depth=2, img_size=28))])
def test_a_backbone_that_cannot_be_cut_says_so_and_still_gives_frozen_features(name, kwargs):
    """test_vit_relpos hands a shared relative-position bias to each block; EVA's _pos_embed returns rope."""
    torch.manual_seed(0)
    model = TransferModel(timm.create_model(name, pretrained=False, num_classes=0, **kwargs), N_CLASSES).eval()
    size = model.backbone.patch_embed.img_size
    x = torch.randn(2, 3, *size)
    for unfreeze in (lambda: unfreeze_last_blocks(model, 1), lambda: unfreeze_last_layers(model, 4)):
        with pytest.raises(UserError, match=f"backbone '{name}' cannot be cut.*--unfreeze-blocks 0") as error:
            unfreeze()
        assert "\n" not in str(error.value)
    end = len(model.units)
    assert freeze_backbone(model).first_trainable_unit == end == unfreeze_last_blocks(model, 0).first_trainable_unit
    assert not any(p.requires_grad for p in model.backbone.parameters())
    with torch.no_grad():
        features = model.prefixes(x, [end])[0]
        assert torch.equal(features, pooled_features(model.backbone, x))
        assert features.shape == (2, model.head[0].in_features)
        assert torch.allclose(model.forward_from(end, features), model(x), atol=1e-6)
