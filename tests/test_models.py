"""The backbone's unit view, the head, and what freezing/unfreezing leaves untouched."""

import numpy as np
import pytest
import torch

from transferlab.models.backbones import create_backbone
from transferlab.models.freezing import (freeze_backbone, is_batchnorm, layers_with_parameters,
                                         unfreeze_last_blocks, unfreeze_last_layers)
from transferlab.models.transfer_model import TransferModel
from transferlab.training.inputs import CachedInputs
from transferlab.training.loop import PhaseSpec, train_phase
from transferlab.data.row_store import RowView


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "mobilenetv2_100", "resnet18", "mobilenetv3_small_100",
                                  "vit_tiny_patch16_224"])
def test_units_compose_to_forward_features(name):
    torch.manual_seed(0)
    backbone = create_backbone(name).eval()
    model = TransferModel(backbone, n_classes=3)
    size = 224 if name.startswith("vit") else 64
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(model.prefix(x, len(model.units) - 1), backbone.forward_features(x), atol=1e-5)
        pooled = backbone.forward_head(backbone.forward_features(x), pre_logits=True)
        assert torch.allclose(model.prefix(x, len(model.units)), pooled, atol=1e-5)
        assert pooled.shape == (2, model.head[0].in_features) and model(x).shape == (2, 3)


def test_head_is_the_seeds_head():
    model = TransferModel(create_backbone("tf_efficientnet_lite0"), n_classes=5)
    linear1, relu, dropout, linear2 = model.head
    assert (linear1.in_features, linear1.out_features, linear2.out_features) == (1280, 128, 5)
    assert isinstance(relu, torch.nn.ReLU) and dropout.p == 0.3


def test_unfreeze_last_layers_counts_layers_with_parameters():
    model = TransferModel(create_backbone("tf_efficientnet_lite0"), n_classes=5)
    plan = unfreeze_last_layers(model, 20)
    last20 = [m for _, m in layers_with_parameters(model.units)][-20:]
    trainable = [m for _, m in layers_with_parameters(model.units)
                 if any(p.requires_grad for p in m.parameters(recurse=False))]
    assert trainable == [m for m in last20 if not is_batchnorm(m)]
    assert plan.layers_counted == 20 and plan.trainable_layers + plan.batchnorm_kept_frozen == 20
    assert plan.trainable_layers == len(trainable)
    assert all(p.requires_grad for p in model.head.parameters())


def test_unfreeze_last_blocks_and_freeze_backbone():
    model = TransferModel(create_backbone("tf_efficientnet_lite0"), n_classes=5)
    plan = unfreeze_last_blocks(model, 3)  # of blocks.5.0-3 and blocks.6.0; conv_head/bn2 go with the last
    first = model.units.index(model.backbone.blocks[5][2])
    assert plan.first_trainable_unit == first
    assert not any(p.requires_grad for u in model.units[:first] for p in u.parameters())
    assert all(p.requires_grad for u in model.units[first:] for m in u.modules() if not is_batchnorm(m)
               for p in m.parameters(recurse=False))
    frozen = freeze_backbone(model)
    assert frozen.trainable_parameters == sum(p.numel() for p in model.head.parameters())
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_fine_tuning_leaves_frozen_weights_and_bn_statistics_bit_identical():
    torch.manual_seed(0)
    model = TransferModel(create_backbone("tf_efficientnet_lite0"), n_classes=3)
    plan = unfreeze_last_layers(model, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = RowView(np.random.default_rng(0).standard_normal((12, 3, 32, 32)).astype(np.float32), np.arange(12))
    labels = np.arange(12) % 3
    inputs = CachedInputs([images], torch.device("cpu"))
    train_phase(model, model, inputs, labels, inputs, labels, PhaseSpec("finetuned", 2, 1e-2, 4, 0),
                [model.head], torch.device("cpu"), show_progress=False)
    trainable = {f"backbone.{n}" for n, p in model.backbone.named_parameters() if p.requires_grad}
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= trainable | {k for k in after if k.startswith("head.")}
    assert not any("running_" in k for k in changed)
    assert plan.trainable_layers > 0
